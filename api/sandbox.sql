-- The sandbox inbox (api/sandbox.py): what the capture sink kept, per tenant.

-- name: list_sandbox_messages
-- One page of a tenant's captures, newest first, by keyset ($2: the last public id of the
-- previous page). Only the first 64 KiB of each message travels: the summary needs the header
-- block, and a page of large messages should not be read whole. Served by
-- sandbox_messages_public_id_idx (tenant_id, public_id). The message each capture delivered is
-- shown by its public id.
SELECT s.public_id AS id, m.public_id AS message_id, s.mail_from, s.rcpt_tos, s.received_at,
       length(s.data) AS size, substring(s.data FROM 1 FOR 65536) AS head
FROM sandbox_messages s
LEFT JOIN messages m ON m.id = s.message_id
WHERE s.tenant_id = $1 AND ($2::text IS NULL OR s.public_id < $2)
ORDER BY s.public_id DESC
LIMIT $3;

-- name: get_sandbox_message
-- One capture, whole, only for its own tenant (another tenant's id is a 404).
SELECT s.public_id AS id, m.public_id AS message_id, s.mail_from, s.rcpt_tos, s.received_at,
       length(s.data) AS size, s.data
FROM sandbox_messages s
LEFT JOIN messages m ON m.id = s.message_id
WHERE s.tenant_id = $1 AND s.public_id = $2;

-- name: sandbox_dkim_keys
-- The public keys DNS would answer for the (domain, selector) pairs a message's signatures
-- name ($1 and $2 side by side). Not scoped to the caller's tenant on purpose: this stands in
-- for public DNS, where every published key is visible. Served by the (domain, selector)
-- unique index.
SELECT domain, selector, algorithm, public_key
FROM sending_domains
WHERE (domain, selector) IN (SELECT d, s FROM unnest($1::text[], $2::text[]) AS pairs (d, s));
