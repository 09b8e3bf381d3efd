-- Replies and automatic replies kept whole by `penguinmails inbound` (inbound_emails, migration
-- 0022), and mail to the tenant's inbound address (no message: migration 0023), read through
-- GET /api/v1/inbound. Every lookup by a caller names its tenant row.

-- name: list_inbound
-- A page of the tenant's inbound mail, newest first by public id ($2: the last id of the
-- previous page), optionally the replies to one message ($4, a msg_ id resolved within the
-- tenant: another tenant's id matches nothing). Served by inbound_emails_public_id_idx, or
-- with $4 by inbound_emails_message_idx.
SELECT e.public_id AS id, m.public_id AS message_id, e.from_email, e.subject, e.auto,
       jsonb_array_length(e.attachments) AS attachment_count, e.received_at
FROM inbound_emails e
LEFT JOIN messages m ON m.id = e.message_id
WHERE e.tenant_id = $1
  AND ($2::text IS NULL OR e.public_id < $2)
  AND ($4::text IS NULL
       OR e.message_id = (SELECT id FROM messages WHERE tenant_id = $1 AND public_id = $4))
ORDER BY e.public_id DESC
LIMIT $3;

-- name: get_inbound
-- One mail of the tenant, without its raw bytes or attachment bytes (fetched by link).
SELECT e.public_id AS id, m.public_id AS message_id, e.from_email, e.subject, e.auto,
       jsonb_array_length(e.attachments) AS attachment_count, e.received_at, e.to_emails,
       e.cc_emails, e.text_body, e.html_body, e.headers, e.attachments
FROM inbound_emails e
LEFT JOIN messages m ON m.id = e.message_id
WHERE e.tenant_id = $1 AND e.public_id = $2;

-- name: inbound_attachment
-- The bytes of one attachment for a download link: the signed token names the mail by public
-- id and stands in for the tenant (inbound_emails_public_id_lookup_idx).
SELECT a.content, e.attachments -> a.ordinal AS meta
FROM inbound_emails e
JOIN inbound_attachments a ON a.inbound_email_id = e.id AND a.ordinal = $2
WHERE e.public_id = $1;

-- name: inbound_raw
-- The mail as it arrived, for a raw download link (as inbound_attachment).
SELECT raw FROM inbound_emails WHERE public_id = $1;

-- name: inbound_token
-- The token of this mode's inbound address, `in-<token>@<bounce domain>`.
SELECT inbound_token FROM tenants WHERE id = $1;

-- name: rotate_inbound_token
-- A new address for this mode; mail to the old one is dropped from now on.
UPDATE tenants SET inbound_token = substr(md5(gen_random_uuid()::text), 1, 20)
WHERE id = $1
RETURNING inbound_token;
