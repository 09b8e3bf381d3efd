-- Sending identities (api/identities.py). Reads go through the identity_usage view
-- (migration 0030): the identity with what its caps have used.

-- name: insert_identity
INSERT INTO identities (tenant_id, email, name, signature_html, signature_text, relay_host,
                        relay_port, relay_username, daily_cap, hourly_cap, min_gap_seconds,
                        random_gap_seconds, warmup_start, warmup_step)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING id, public_id;

-- name: set_relay_password
-- Sealed by the caller with the identity's public id as associated data.
UPDATE identities SET relay_password = $2, updated_at = now() WHERE id = $1;

-- name: get_identity
SELECT * FROM identity_usage WHERE tenant_id = $1 AND public_id = $2;

-- name: list_identities
-- Newest first, keyset-paginated on the public id; archived ones left out.
SELECT * FROM identity_usage
WHERE tenant_id = $1 AND status <> 'archived' AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: update_identity
UPDATE identities
SET email = $3, name = $4, signature_html = $5, signature_text = $6, relay_host = $7,
    relay_port = $8, relay_username = $9, daily_cap = $10, hourly_cap = $11,
    min_gap_seconds = $12, random_gap_seconds = $13, warmup_start = $14, warmup_step = $15,
    updated_at = now()
WHERE tenant_id = $1 AND public_id = $2 AND status <> 'archived'
RETURNING id;

-- name: clear_relay_password
UPDATE identities SET relay_password = NULL, updated_at = now() WHERE id = $1;

-- name: release_identity_holds
-- A change to an identity's caps (or its resume) may let its held messages go now: they are
-- due again and the next claim recounts. Their order among themselves is kept.
UPDATE messages
SET next_attempt_at = now(), held_reason = NULL, updated_at = now()
WHERE identity_id = $1 AND status IN ('queued', 'deferred') AND held_reason IS NOT NULL;

-- name: pause_identity
-- By hand: the claim holds its messages (reason 'identity paused') until it is resumed.
UPDATE identities
SET status = 'paused', paused_reason = $3, paused_at = now(), updated_at = now()
WHERE tenant_id = $1 AND public_id = $2 AND status <> 'archived'
RETURNING id;

-- name: resume_identity
UPDATE identities
SET status = 'active', paused_reason = NULL, paused_at = NULL, updated_at = now()
WHERE tenant_id = $1 AND public_id = $2 AND status <> 'archived'
RETURNING id;

-- name: archive_identity
-- Its waiting messages stay bound to it and are held ('identity paused: archived') rather
-- than sent from an address the tenant retired, or lost: cancel them through the messages
-- API, or resume... an archived identity is not resumed; the row stays for history.
UPDATE identities
SET status = 'archived', paused_reason = 'archived', updated_at = now()
WHERE tenant_id = $1 AND public_id = $2 AND status <> 'archived'
RETURNING id;

-- name: identity_ids
-- Public ids of a pool to row ids (the caller's own, not archived), for campaigns and
-- sequences.
SELECT id, public_id, status FROM identities
WHERE tenant_id = $1 AND public_id = ANY ($2::text[]) AND status <> 'archived';

-- name: identity_public_ids
SELECT id, public_id FROM identities WHERE id = ANY ($1::bigint[]);

-- name: assign_identities
-- A campaign's new messages ($3, in recipient order) spread round robin over its pool's
-- active identities ($2: public ids, in the pool's order): each takes the identity's address,
-- name and signature. Answers how many identities took part (0: none is active).
WITH pool AS (
    SELECT i.id, i.email, i.name, i.signature_html, i.signature_text,
           row_number() OVER (ORDER BY p.n) - 1 AS slot, count(*) OVER () AS size
    FROM unnest($2::text[]) WITH ORDINALITY AS p (public_id, n)
    JOIN identities i ON i.tenant_id = $1 AND i.public_id = p.public_id
                     AND i.status = 'active'
), turns AS (
    SELECT o.id, o.n - 1 AS turn FROM unnest($3::bigint[]) WITH ORDINALITY AS o (id, n)
), assigned AS (
    UPDATE messages m
    SET identity_id = p.id, from_email = p.email, from_name = p.name,
        html_body = with_signature(m.html_body, p.signature_html),
        text_body = with_text_signature(m.text_body, p.signature_text)
    FROM turns t JOIN pool p ON p.slot = t.turn % p.size
    WHERE m.id = t.id AND m.tenant_id = $1
)
SELECT count(*) FROM pool;
