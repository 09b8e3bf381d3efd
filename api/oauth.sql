-- name: insert_client
-- A client's secret is shown once, at registration; only its digest is kept.
INSERT INTO oauth_clients (tenant_id, name, redirect_uris, secret_hash)
VALUES ($1, $2, $3, $4)
RETURNING public_id AS id, name, redirect_uris, secret_hash IS NULL AS public, created_at,
          revoked_at;

-- name: list_clients
-- The tenant's own clients, newest first, keyset-paginated on the public id.
SELECT public_id AS id, name, redirect_uris, secret_hash IS NULL AS public, created_at,
       revoked_at
FROM oauth_clients
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: revoke_client
-- A revoked client can start no authorization, and every token issued to it stops at once
-- (find_access_token checks the client too).
UPDATE oauth_clients SET revoked_at = coalesce(revoked_at, now())
WHERE tenant_id = $1 AND public_id = $2
RETURNING public_id AS id, name, redirect_uris, secret_hash IS NULL AS public, created_at,
          revoked_at;

-- name: find_client
-- Every authorize and token request: the client by its client_id, whoever registered it.
SELECT c.id, c.public_id, c.name, c.redirect_uris, c.secret_hash, t.name AS tenant_name
FROM oauth_clients c JOIN tenants t ON t.id = c.tenant_id
WHERE c.public_id = $1 AND c.revoked_at IS NULL;

-- name: consent_user
-- The user who logged in on the consent page, for the code.
SELECT u.id, u.tenant_id, t.mode FROM users u JOIN tenants t ON t.id = u.tenant_id
WHERE u.id = $1;

-- name: insert_code
INSERT INTO oauth_codes (code_hash, client_id, user_id, redirect_uri, scope, code_challenge,
                         code_challenge_method, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8));

-- name: claim_code
-- Claimed at the first exchange, whatever then happens (a wrong verifier burns the code):
-- one atomic update, so two exchanges at once cannot both get tokens.
UPDATE oauth_codes SET used_at = now()
WHERE code_hash = $1 AND client_id = $2 AND used_at IS NULL AND expires_at > now()
RETURNING user_id, redirect_uri, scope, code_challenge, code_challenge_method;

-- name: revoke_reused_code_grant
-- A code presented again: what its first exchange was granted is revoked (RFC 6749 4.1.2).
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = (SELECT grant_id FROM oauth_codes WHERE code_hash = $1 AND used_at IS NOT NULL);

-- name: insert_grant
-- One consent, shown in the key list as a key of kind oauth with its client and scope.
INSERT INTO api_keys (tenant_id, prefix, secret_hash, kind, mode, name, oauth_client_id,
                      oauth_user_id, scope)
SELECT u.tenant_id, $3, '\x'::bytea, 'oauth', t.mode, c.name, c.id, u.id, $4
FROM users u JOIN tenants t ON t.id = u.tenant_id, oauth_clients c
WHERE u.id = $1 AND c.id = $2
RETURNING id;

-- name: link_code_grant
UPDATE oauth_codes SET grant_id = $2 WHERE code_hash = $1;

-- name: insert_token
INSERT INTO oauth_tokens (grant_id, access_hash, refresh_hash, scope, access_expires_at,
                          refresh_expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5),
        CASE WHEN $3::bytea IS NULL THEN NULL ELSE now() + make_interval(secs => $6) END);

-- name: claim_refresh_token
-- Rotation: the refresh token is spent by the refresh that presents it, atomically.
UPDATE oauth_tokens o SET revoked_at = now()
FROM api_keys k, oauth_clients c
WHERE o.refresh_hash = $1 AND o.revoked_at IS NULL AND o.refresh_expires_at > now()
  AND k.id = o.grant_id AND k.revoked_at IS NULL AND c.id = k.oauth_client_id
  AND c.revoked_at IS NULL AND c.public_id = $2
RETURNING o.grant_id, o.scope, k.oauth_user_id AS user_id;

-- name: revoke_grant_of_refresh
-- A refresh token presented after it was rotated or revoked: someone holds a copy, so the
-- whole grant ends (RFC 9700 4.14.2).
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = (SELECT grant_id FROM oauth_tokens WHERE refresh_hash = $1 AND revoked_at IS NOT NULL);

-- name: find_token
-- Revocation and introspection: a token by the digest of its access or refresh half.
SELECT o.id, o.grant_id, o.scope, o.access_expires_at, o.refresh_expires_at, o.issued_at,
       (o.refresh_hash = $1) AS is_refresh,
       (o.revoked_at IS NOT NULL OR k.revoked_at IS NOT NULL OR c.revoked_at IS NOT NULL)
           AS revoked,
       c.public_id AS client_id, k.mode, u.public_id AS user_id
FROM oauth_tokens o
JOIN api_keys k ON k.id = o.grant_id
JOIN oauth_clients c ON c.id = k.oauth_client_id
JOIN users u ON u.id = k.oauth_user_id
WHERE o.access_hash = $1 OR o.refresh_hash = $1;

-- name: revoke_token
UPDATE oauth_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1;

-- name: revoke_grant
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1;

-- name: find_access_token
-- Every request made with an access token: one probe of the unique digest index. The token,
-- its grant and its client must all be live.
SELECT o.scope, o.access_expires_at > now() AS fresh,
       (o.revoked_at IS NULL AND k.revoked_at IS NULL AND c.revoked_at IS NULL) AS live,
       k.id AS grant_id, k.tenant_id, k.oauth_user_id AS user_id, t.mode,
       a.id AS account_id, a.tier
FROM oauth_tokens o
JOIN api_keys k ON k.id = o.grant_id
JOIN oauth_clients c ON c.id = k.oauth_client_id
JOIN tenants t ON t.id = k.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE o.access_hash = $1;

-- name: prune_codes
-- Housekeeping: codes a day past their expiry are of no use, even to spot a reuse.
DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day';
