-- Bounces, complaints, replies and mailed unsubscribes received by `penguinmails inbound`
-- (inbound/server.py). Volumes are small next to sending; each statement is one transaction.

-- name: inbound_message
-- The original a signed VERP address names. Primary-key probe.
SELECT id, tenant_id, recipient, status FROM messages WHERE id = $1;

-- name: inbound_message_by_header_id
-- The original found by a Message-ID quoted in a report or a reply (no brackets), when no
-- signed address is at hand: weak evidence (every reader of the thread has seen it), so a
-- report found this way is only noted, never acted on. $1 lists candidates, most direct
-- first; served by the unique index on messages.message_id.
SELECT id, tenant_id, recipient, status FROM messages
WHERE message_id = ANY($1::text[])
ORDER BY array_position($1::text[], message_id)
LIMIT 1;

-- name: inbound_record
-- Everything one inbound mail changes for one original, in one statement and so one
-- transaction: the log row (whose unique (message_id, dedupe_key) makes a second delivery of
-- the same report a no-op for everything below it), the event (webhooks and the campaign
-- rollup follow by trigger), the suppression of the original's stored recipient (never an
-- address the report names: a report cannot suppress someone we did not mail), and for a
-- failed DSN the move from 'sent' to 'bounced'. $11 (first_only) writes the event only for
-- the first of its type for the message, as the tracker does for unsubscribes; otherwise
-- is_unique still marks the first.
-- $19 (a reply or automatic reply) keeps the mail whole in inbound_emails ($20..$29: from, to,
-- cc, subject, text, html, headers, raw, attachment metadata, attachment bytes in the same
-- order) with an `email.received` event naming it: behind the log row, so a retried delivery
-- stores nothing twice, and in this statement, so the 250 still follows the commit.
WITH m AS (
    SELECT id, tenant_id, campaign_id, recipient, status FROM messages WHERE id = $1
), logged AS (
    INSERT INTO inbound_messages (message_id, tenant_id, classification, dedupe_key, reason,
                                  matched_by, mail_from, rcpt_to, header_message_id, sha256,
                                  detail)
    SELECT id, tenant_id, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10::jsonb, '{}')
    FROM m
    ON CONFLICT (message_id, dedupe_key) DO NOTHING
    RETURNING id, message_id
), first_time AS (
    INSERT INTO engagement_firsts (message_id, type)
    SELECT message_id, $12 FROM logged WHERE $12::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING message_id
), recorded AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data, is_unique)
    SELECT m.tenant_id, m.id, m.campaign_id, $12,
           coalesce($10::jsonb, '{}') || jsonb_build_object('inbound_id', logged.id)
           -- A bounce of a message the receiver had accepted: analytics must stop counting
           -- it as delivered (the campaign rollup reads this flag).
           || CASE WHEN $12 = 'email.bounced'
                   THEN jsonb_build_object('after_delivery', m.status = 'sent')
                   ELSE '{}'::jsonb END,
           EXISTS (SELECT 1 FROM first_time)
    FROM m JOIN logged ON logged.message_id = m.id
    WHERE $12::text IS NOT NULL AND (NOT $11::bool OR EXISTS (SELECT 1 FROM first_time))
    RETURNING id
), suppressed AS (
    INSERT INTO suppressions (tenant_id, email, reason, detail)
    SELECT m.tenant_id, lower(m.recipient), $13, $14
    FROM m JOIN logged ON logged.message_id = m.id
    WHERE $13::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING email
), stored AS (
    INSERT INTO inbound_emails (tenant_id, inbound_message_id, message_id, auto, from_email,
                                to_emails, cc_emails, subject, text_body, html_body, headers,
                                raw, attachments)
    SELECT m.tenant_id, logged.id, m.id, $2 = 'auto_reply', $20, $21, $22, $23, $24, $25,
           $26::jsonb, $27, $28::jsonb
    FROM m JOIN logged ON logged.message_id = m.id
    WHERE $19::bool
    RETURNING id, public_id, message_id
), stored_attachments AS (
    INSERT INTO inbound_attachments (inbound_email_id, ordinal, content)
    SELECT stored.id, part.ordinal - 1, part.content
    FROM stored, unnest($29::bytea[]) WITH ORDINALITY AS part (content, ordinal)
    RETURNING ordinal
), received AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data, is_unique)
    SELECT m.tenant_id, m.id, m.campaign_id, 'email.received',
           jsonb_build_object('inbound_id', stored.public_id, 'from', $20::text,
                              'subject', $23::text, 'auto', $2 = 'auto_reply'),
           NOT EXISTS (SELECT 1 FROM events e
                       WHERE e.message_id = m.id AND e.type = 'email.received')
    FROM m JOIN stored ON stored.message_id = m.id
    RETURNING id
), bounced AS (
    UPDATE messages
    SET status = 'bounced',
        enhanced_status = coalesce($16, enhanced_status),
        last_reply_code = coalesce($17, last_reply_code),
        last_reply = coalesce($18, last_reply),
        updated_at = now()
    WHERE id IN (SELECT message_id FROM logged) AND $15::bool AND status = 'sent'
    RETURNING id
)
SELECT (SELECT count(*) FROM logged) AS logged,
       (SELECT count(*) FROM recorded) AS events,
       (SELECT count(*) FROM suppressed) AS suppressed,
       (SELECT count(*) FROM bounced) AS bounced,
       (SELECT public_id FROM stored) AS inbound_id;

-- name: inbound_tenant
-- The tenant row whose inbound address is `in-<$1>@...` (tenants_inbound_token_idx).
SELECT id FROM tenants WHERE inbound_token = $1;

-- name: inbound_record_tenant_mail
-- Mail to a tenant's inbound address that answers none of its messages, kept whole for the
-- tenant: the log row with no message (its partial unique index on (tenant_id, dedupe_key)
-- makes a second delivery of the same mail a no-op), the mail and its attachments, and an
-- `email.received` event with no message, all in one statement so the 250 follows the
-- commit. $8..$17 are inbound_record's $20..$29 (from, to, cc, subject, text, html, headers,
-- raw, attachment metadata, attachment bytes).
WITH logged AS (
    INSERT INTO inbound_messages (message_id, tenant_id, classification, dedupe_key, reason,
                                  matched_by, mail_from, rcpt_to, header_message_id, sha256)
    VALUES (NULL, $1, 'inbound', $2, $3, 'inbound_address', $4, $5, $6, $7)
    ON CONFLICT (tenant_id, dedupe_key) WHERE message_id IS NULL DO NOTHING
    RETURNING id
), stored AS (
    INSERT INTO inbound_emails (tenant_id, inbound_message_id, message_id, auto, from_email,
                                to_emails, cc_emails, subject, text_body, html_body, headers,
                                raw, attachments)
    SELECT $1, logged.id, NULL, $18, $8, $9, $10, $11, $12, $13, $14::jsonb, $15, $16::jsonb
    FROM logged
    RETURNING id, public_id
), stored_attachments AS (
    INSERT INTO inbound_attachments (inbound_email_id, ordinal, content)
    SELECT stored.id, part.ordinal - 1, part.content
    FROM stored, unnest($17::bytea[]) WITH ORDINALITY AS part (content, ordinal)
    RETURNING ordinal
), received AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data, is_unique)
    SELECT $1, NULL, NULL, 'email.received',
           jsonb_build_object('inbound_id', stored.public_id, 'from', $8::text,
                              'subject', $11::text, 'auto', $18::bool, 'to', $5::text),
           true
    FROM stored
    RETURNING id
)
SELECT (SELECT count(*) FROM logged) AS logged,
       (SELECT count(*) FROM stored_attachments) AS attachments,
       (SELECT public_id FROM stored) AS inbound_id;

-- name: is_return_path_domain
-- A sending domain's own return path (`bounces.<domain>`, penguinmails/deliverability.py):
-- accepted like [inbound] bounce_domains. Any stored one, verified now or not: mail sent
-- while it was verified still brings its bounces back after its DNS changes. Nothing is
-- relayed either way, and the VERP MAC decides what a message is about.
SELECT EXISTS (SELECT 1 FROM domain_verifications WHERE return_path_domain = $1);
