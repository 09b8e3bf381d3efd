-- Content intelligence (api.ai) and the analytics' ai_insights: each reads the account's own
-- delivered messages and their first engagement.

-- name: subject_history
-- The account's last $2 delivered messages grouped by subject, each group with how many a
-- person opened (machine opens are proxies and scanners, not interest), clicked and replied
-- to (message_engagement, migration 0045): what its own estimate is fitted on.
-- messages_tenant_idx walks the newest rows first.
SELECT m.subject,
       count(*)::int AS delivered,
       count(*) FILTER (WHERE g.opened)::int AS opened,
       count(*) FILTER (WHERE g.clicked)::int AS clicked,
       count(*) FILTER (WHERE g.replied)::int AS replied
FROM (SELECT id, subject FROM messages
      WHERE tenant_id = $1 AND status = 'sent'
      ORDER BY id DESC LIMIT $2) m
CROSS JOIN LATERAL message_engagement(m.id) g
GROUP BY m.subject;

-- name: campaign_subjects
-- A campaign's messages by subject (its A/B variants, or its one subject): delivered, and how
-- many a person opened, clicked and replied to. messages_campaign_idx.
SELECT m.subject,
       count(*)::int AS delivered,
       count(*) FILTER (WHERE g.opened)::int AS opened,
       count(*) FILTER (WHERE g.clicked)::int AS clicked,
       count(*) FILTER (WHERE g.replied)::int AS replied
FROM messages m
CROSS JOIN LATERAL message_engagement(m.id) g
WHERE m.campaign_id = $1 AND m.status = 'sent'
GROUP BY m.subject;

-- name: campaign_bounce_domains
-- A campaign's recipient domains with bounces: messages that reached a verdict there, and
-- how many bounced. messages_campaign_idx.
SELECT recipient_domain AS domain,
       count(*)::int AS attempted,
       count(*) FILTER (WHERE status = 'bounced')::int AS bounced
FROM messages
WHERE campaign_id = $1 AND status IN ('sent', 'bounced')
GROUP BY recipient_domain
HAVING count(*) FILTER (WHERE status = 'bounced') > 0;

-- name: send_hours
-- The account's last $2 delivered messages by the UTC hour they were delivered, with how many
-- a person opened: its best send hours. messages_tenant_idx, newest first.
SELECT extract(hour FROM m.sent_at AT TIME ZONE 'UTC')::int AS hour,
       count(*)::int AS delivered,
       count(*) FILTER (WHERE g.opened)::int AS opened
FROM (SELECT id, sent_at FROM messages
      WHERE tenant_id = $1 AND status = 'sent' AND sent_at IS NOT NULL
      ORDER BY id DESC LIMIT $2) m
CROSS JOIN LATERAL message_engagement(m.id) g
GROUP BY 1;

-- name: contact_engagement
-- This account's messages to one address (messages_recipient_search_idx): how many, and
-- what became of them.
SELECT count(*)::int AS messages,
       count(*) FILTER (WHERE m.status = 'sent')::int AS delivered,
       count(*) FILTER (WHERE m.status = 'bounced')::int AS bounced,
       count(*) FILTER (WHERE g.opened)::int AS opened,
       count(*) FILTER (WHERE g.clicked)::int AS clicked,
       count(*) FILTER (WHERE g.replied)::int AS replied,
       max(m.sent_at) AS last_sent_at
FROM messages m
CROSS JOIN LATERAL message_engagement(m.id) g
WHERE m.tenant_id = $1 AND lower(m.recipient) = lower($2);
