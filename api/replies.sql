-- Replies across campaigns and sequences (api/replies.py): what came back to the tenant's
-- messages, kept whole by `penguinmails inbound` (inbound_emails), with the sequence step it
-- answers when there is one. Every lookup names the caller's tenant row.

-- name: list_replies
-- Newest first by public id ($2: the previous page's last), optionally one sequence's ($4, a
-- seq_ id within the tenant). Served by inbound_emails_public_id_idx; the joins are key
-- probes per row of the page.
SELECT e.public_id AS id, e.from_email, e.subject, e.auto, e.received_at, e.text_body,
       e.headers, m.public_id AS message_id, m.subject AS message_subject,
       q.public_id AS sequence_id, en.public_id AS enrollment_id, sm.step,
       c.public_id AS campaign_id
FROM inbound_emails e
LEFT JOIN messages m ON m.id = e.message_id
LEFT JOIN campaigns c ON c.id = m.campaign_id
LEFT JOIN sequence_messages sm ON sm.message_id = e.message_id
LEFT JOIN sequence_enrollments en ON en.id = sm.enrollment_id
LEFT JOIN sequences q ON q.id = en.sequence_id
WHERE e.tenant_id = $1
  AND ($2::text IS NULL OR e.public_id < $2)
  AND ($4::text IS NULL OR q.public_id = $4)
ORDER BY e.public_id DESC
LIMIT $3;

-- name: reply_thread
-- The conversation one reply belongs to: every step message of its enrolment (or the one
-- message it answers), oldest first, each with the mail that came back to it.
WITH reply AS (
    SELECT e.message_id, sm.enrollment_id
    FROM inbound_emails e
    LEFT JOIN sequence_messages sm ON sm.message_id = e.message_id
    WHERE e.tenant_id = $1 AND e.public_id = $2
), thread AS (
    SELECT m.id, sm.step
    FROM reply r
    JOIN sequence_messages sm ON sm.enrollment_id = r.enrollment_id
    JOIN messages m ON m.id = sm.message_id
    UNION
    SELECT m.id, NULL::integer
    FROM reply r JOIN messages m ON m.id = r.message_id
    WHERE r.enrollment_id IS NULL
)
SELECT 'sent' AS direction, m.public_id AS id, t.step, m.subject, m.recipient AS party,
       coalesce(m.sent_at, m.created_at) AS at, m.status
FROM thread t JOIN messages m ON m.id = t.id
UNION ALL
SELECT 'received', e.public_id, t.step, e.subject, e.from_email, e.received_at,
       CASE WHEN e.auto THEN 'auto_reply' ELSE 'reply' END
FROM thread t JOIN inbound_emails e ON e.message_id = t.id AND e.tenant_id = $1
ORDER BY at, direction DESC;
