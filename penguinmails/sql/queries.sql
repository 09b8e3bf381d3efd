-- name: ensure_tenant
-- Tenants are created on first use by the CLI; the no-op update makes RETURNING see the
-- existing row too, in one statement and race-free.
INSERT INTO tenants (name, tier) VALUES ($1, coalesce($2, 'free'))
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING id;

-- name: enqueue_messages
-- Bulk insert through unnest: one statement (and one NOTIFY) for any number of recipients.
INSERT INTO messages (tenant_id, campaign_id, message_id, from_email, from_name, recipient,
                      recipient_domain, subject, text_body, html_body, headers,
                      personalization, settings, next_attempt_at, sandbox)
SELECT $1, $2, m.message_id, $3, $4, m.recipient, m.domain, $5, $6, $7, $8, m.personalization,
       $9, coalesce($10, now()), $15
FROM unnest($11::text[], $12::text[], $13::text[], $14::jsonb[])
     AS m(message_id, recipient, domain, personalization)
RETURNING id;

-- name: queue_depth
-- For `penguinmails status`: how much is where, per destination domain.
SELECT status, recipient_domain, count(*) AS messages, min(next_attempt_at) AS oldest_due
FROM messages
WHERE status IN ('queued', 'deferred', 'sending')
GROUP BY status, recipient_domain
ORDER BY count(*) DESC
LIMIT $1;

-- name: status_totals
SELECT status, count(*) AS messages FROM messages GROUP BY status ORDER BY status;
