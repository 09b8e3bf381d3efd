-- name: search_messages
-- A page of the tenant's messages, newest first by public id ($2: the last id of the previous
-- page). Each filter has an index ending in public_id (migration 0020), walked backwards until
-- the page is full. since/until ($8/$9, on created_at) also bound public_id ($10/$11, from
-- api/messages.py id_bound): an id's time is its row's insert time, never before created_at
-- (the transaction's start), so the range keeps the (tenant_id, public_id) index in play.
SELECT m.public_id AS id, c.public_id AS campaign_id, m.recipient, m.subject, m.status,
       m.attempts, m.tags, m.created_at, m.sent_at, m.last_reply_code
FROM messages m
LEFT JOIN campaigns c ON c.id = m.campaign_id
WHERE m.tenant_id = $1
  AND ($2::text IS NULL OR m.public_id < $2)
  AND ($4::text IS NULL OR lower(m.recipient) = lower($4))
  AND ($5::text IS NULL OR m.status = $5)
  AND ($6::text IS NULL
       OR m.campaign_id = (SELECT id FROM campaigns WHERE tenant_id = $1 AND public_id = $6))
  AND ($7::text IS NULL OR m.tags @> ARRAY[$7::text])
  AND ($8::timestamptz IS NULL OR (m.created_at >= $8 AND m.public_id >= $10::text))
  AND ($9::timestamptz IS NULL OR (m.created_at < $9 AND m.public_id < $11::text))
ORDER BY m.public_id DESC
LIMIT $3;

-- name: search_events
-- A page of the tenant's event log, newest first by public id. Type: exact ($4) or a prefix
-- range ($5 <= type < $6, the C collation of events_type_search_idx). Message and campaign
-- by public id, resolved within the tenant (another tenant's id matches nothing).
SELECT e.public_id AS id, e.type, e.created_at, m.public_id AS message_id,
       c.public_id AS campaign_id, e.data
FROM events e
LEFT JOIN messages m ON m.id = e.message_id
LEFT JOIN campaigns c ON c.id = e.campaign_id
WHERE e.tenant_id = $1
  AND ($2::text IS NULL OR e.public_id < $2)
  AND ($4::text IS NULL OR (e.type COLLATE "C") = $4)
  AND ($5::text IS NULL OR ((e.type COLLATE "C") >= $5 AND (e.type COLLATE "C") < $6::text))
  AND ($7::text IS NULL
       OR e.message_id = (SELECT id FROM messages WHERE tenant_id = $1 AND public_id = $7))
  AND ($8::text IS NULL
       OR e.campaign_id = (SELECT id FROM campaigns WHERE tenant_id = $1 AND public_id = $8))
  AND ($9::timestamptz IS NULL OR (e.created_at >= $9 AND e.public_id >= $11::text))
  AND ($10::timestamptz IS NULL OR (e.created_at < $10 AND e.public_id < $12::text))
ORDER BY e.public_id DESC
LIMIT $3;

-- name: lock_message
-- The message to cancel or reschedule, locked so the MTA's claim (SKIP LOCKED) passes it by
-- while the state is checked and changed.
SELECT id, status, next_attempt_at, next_attempt_at > now() AS waiting
FROM messages WHERE tenant_id = $1 AND public_id = $2
FOR UPDATE;

-- name: cancel_message
-- Cancel and record `email.cancelled` in one statement (as queue_purge does). The status
-- is checked again here, not only by the caller; the UPDATE fires the campaign completion
-- trigger (migration 0006), so cancelling a campaign's last waiting message completes it.
WITH cancelled AS (
    UPDATE messages SET status = 'cancelled', updated_at = now()
    WHERE id = $1 AND status IN ('queued', 'deferred', 'paused')
    RETURNING id, tenant_id, campaign_id, recipient
)
INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
SELECT tenant_id, id, campaign_id, 'email.cancelled',
       jsonb_build_object('recipient', recipient, 'reason', 'cancelled through the API')
FROM cancelled;

-- name: reschedule_message
-- Move a waiting message's due time and record `email.rescheduled` with the old and new
-- times, in one statement. Waiting: queued and not yet due, or deferred (checked again here).
WITH moved AS (
    UPDATE messages m SET next_attempt_at = $2, updated_at = now()
    FROM (SELECT id, next_attempt_at FROM messages WHERE id = $1) old
    WHERE m.id = old.id
      AND (m.status = 'deferred' OR (m.status = 'queued' AND m.next_attempt_at > now()))
    RETURNING m.id, m.tenant_id, m.campaign_id, old.next_attempt_at AS previous
)
INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
SELECT tenant_id, id, campaign_id, 'email.rescheduled',
       jsonb_build_object('send_at', $2::timestamptz, 'previous_send_at', previous)
FROM moved;
