-- Analytics (api/analytics.py). A campaign's reads are of its rollups or its conversions,
-- never of its events; a tag has no rollup, so its reads go through the tagged messages.

-- name: campaign_by_public_id
-- The campaign a path names, within the caller's tenant row (another tenant's, or the other
-- mode's, is not found). Unique-index probe on public_id.
SELECT id, public_id, recipient_count, variants, ab_winner
FROM campaigns WHERE public_id = $1 AND tenant_id = $2;

-- name: campaign_stats
-- The rollup (campaign_stats, kept by a trigger on events) read by its primary key: at most
-- (hours in the period x event types) rows, whatever the campaign's size. $3 is 'hour' or
-- 'day'; buckets are UTC.
SELECT date_trunc($3, bucket, 'UTC') AS bucket, type,
       sum(total)::bigint AS total, sum(uniq)::bigint AS uniq, sum(human)::bigint AS human,
       sum(human_unique)::bigint AS human_unique
FROM campaign_stats
WHERE campaign_id = $1 AND ($2::timestamptz IS NULL OR bucket >= $2)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: campaign_dimensions
-- Opens and clicks by device and by country (campaign_dimension_stats, kept by the same
-- trigger), summed over the period; read by the rollup's primary key like campaign_stats.
SELECT dimension, value, type,
       sum(total)::bigint AS total, sum(uniq)::bigint AS uniq, sum(human)::bigint AS human,
       sum(human_unique)::bigint AS human_unique
FROM campaign_dimension_stats
WHERE campaign_id = $1 AND ($2::timestamptz IS NULL OR bucket >= $2)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: campaign_links
-- Clicks by link: the URL each click was redirected to (the tracker records it in data.url),
-- the $3 most clicked in the period. Unlike the rollups this reads the click events, through
-- the partial events_campaign_engagement_idx: its cost grows with the campaign's clicks,
-- never with its sends. Unique: messages that clicked the link; human: not a scanner's.
SELECT data->>'url' AS url, count(*)::bigint AS total,
       count(DISTINCT message_id)::bigint AS uniq,
       count(*) FILTER (WHERE NOT is_machine)::bigint AS human,
       count(DISTINCT message_id) FILTER (WHERE NOT is_machine)::bigint AS human_unique
FROM events
WHERE campaign_id = $1 AND type = 'email.clicked' AND data ? 'url'
  AND ($2::timestamptz IS NULL OR created_at >= $2)
GROUP BY 1
ORDER BY total DESC, url
LIMIT $3;

-- name: campaign_revenue
-- A campaign's conversions in the period (by when they happened), per currency (a sum across
-- currencies means nothing): the value of all of them, and of those reported with a click's
-- token. Conversions without a value have no currency and count in the NULL row. Read
-- through conversions_campaign_idx.
SELECT currency,
       count(*) AS conversions,
       coalesce(sum(value_minor), 0)::bigint AS conversion_value_minor,
       coalesce(sum(value_minor) FILTER (WHERE source = 'click'), 0)::bigint
           AS total_value_minor
FROM conversions
WHERE campaign_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
GROUP BY currency
ORDER BY currency;

-- name: tag_stats
-- Analytics by tag: the events of the tenant row's messages carrying tag $2, queued since $3,
-- counted by type as the rollup counts them (bounces after delivery apart). Unlike a
-- campaign, a tag has no rollup: the messages come from the GIN index on tags and their
-- events from events_message_idx, so the cost grows with the tagged messages in the period.
SELECT e.type, count(*) AS total, count(*) FILTER (WHERE e.is_unique) AS uniq,
       count(*) FILTER (WHERE NOT e.is_machine) AS human,
       count(*) FILTER (WHERE e.is_unique AND NOT e.is_machine) AS human_unique
FROM messages m
JOIN events e ON e.message_id = m.id
WHERE m.tenant_id = $1 AND m.tags @> ARRAY[$2::text]
  AND ($3::timestamptz IS NULL OR m.created_at >= $3)
GROUP BY e.type
UNION ALL
SELECT 'email.bounced.after_delivery', count(*), count(*) FILTER (WHERE e.is_unique),
       count(*) FILTER (WHERE NOT e.is_machine),
       count(*) FILTER (WHERE e.is_unique AND NOT e.is_machine)
FROM messages m
JOIN events e ON e.message_id = m.id
WHERE m.tenant_id = $1 AND m.tags @> ARRAY[$2::text]
  AND ($3::timestamptz IS NULL OR m.created_at >= $3)
  AND e.type = 'email.bounced' AND (e.data ->> 'after_delivery')::boolean;

-- name: tag_recipients
-- How many messages (one per envelope recipient) carry the tag in the period.
SELECT count(*) FROM messages
WHERE tenant_id = $1 AND tags @> ARRAY[$2::text]
  AND ($3::timestamptz IS NULL OR created_at >= $3);
