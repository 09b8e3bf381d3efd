-- Content intelligence (api.ai) and the analytics' ai_insights: each reads the account's own
-- delivered messages and their first engagement.

-- name: subject_history
-- The account's last $2 delivered messages grouped by subject, each group with how many a
-- person opened (machine opens are proxies and scanners, not interest), clicked and replied
-- to: what its own estimate is fitted on. messages_tenant_idx walks the newest rows first;
-- each EXISTS is one probe of events_message_idx.
SELECT m.subject,
       count(*)::int AS delivered,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM events e WHERE e.message_id = m.id AND e.type = 'email.opened'
                                    AND NOT e.is_machine))::int AS opened,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM events e WHERE e.message_id = m.id
                                    AND e.type = 'email.clicked' AND NOT e.is_machine))::int AS clicked,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM events e WHERE e.message_id = m.id
                                    AND e.type = 'email.replied'))::int AS replied
FROM (SELECT id, subject FROM messages
      WHERE tenant_id = $1 AND status = 'sent'
      ORDER BY id DESC LIMIT $2) m
GROUP BY m.subject;
