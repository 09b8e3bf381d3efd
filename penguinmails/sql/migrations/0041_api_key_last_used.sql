-- When each API key last authenticated a request, for the developers' page: a key unused for
-- months is one to revoke. Written after the key verifies (a caller who knows only a key's
-- prefix cannot move it), at most once a minute per key, so a busy key costs one small
-- update a minute rather than a write per request.
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
