-- Campaign analytics (api/analytics.py): every read is of a rollup or of the campaign's
-- conversions, never of its events.

-- name: campaign_by_public_id
-- The campaign a path names, within the caller's tenant row (another tenant's, or the other
-- mode's, is not found). Unique-index probe on public_id.
SELECT id, public_id, recipient_count FROM campaigns WHERE public_id = $1 AND tenant_id = $2;

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
