-- Conversions (api/conversions.py); analytics sums them in api/analytics.sql.

-- name: conversion_message_by_public_id
-- The message a keyed request names, within the caller's tenant row (so a live key cannot
-- name a test-mode message, nor one account another's). Unique-index probe on public_id.
SELECT m.id, m.tenant_id, t.mode, a.tier
FROM messages m
JOIN tenants t ON t.id = m.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE m.public_id = $1 AND m.tenant_id = $2;

-- name: conversion_message
-- The message a verified click token names, with its tenant row's mode and the account's
-- tier: a request without a key is counted against that tenant's budget. Primary-key probe.
SELECT m.id, m.tenant_id, t.mode, a.tier
FROM messages m
JOIN tenants t ON t.id = m.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE m.id = $1;

-- name: record_conversion
-- The conversion, its `goal.converted` event and (with a value above zero) its
-- `revenue.recorded` event, in one statement and so one transaction; the events carry the
-- campaign, so the campaign rollup and the webhook fan-out follow by trigger. They are dated
-- when the conversion happened, as a hit is: the rollup's buckets then agree with the
-- revenue that analytics sums by occurred_at. A token already used hits the unique
-- token_hash and inserts nothing: no row comes back (the caller's 409). No row either when
-- the message was deleted since it was looked up.
WITH m AS (
    SELECT m.id, m.tenant_id, m.campaign_id, m.public_id, c.public_id AS campaign_public_id
    FROM messages m
    LEFT JOIN campaigns c ON c.id = m.campaign_id
    WHERE m.id = $1
), conversion AS (
    INSERT INTO conversions (tenant_id, message_id, campaign_id, goal, value, value_minor,
                             currency, source, link_index, clicked_at, token_hash, metadata,
                             occurred_at)
    SELECT tenant_id, id, campaign_id, $2, $3, $4, $5, $6, $7, $8, $9, $10,
           coalesce($11, now())
    FROM m
    ON CONFLICT (token_hash) DO NOTHING
    RETURNING id, public_id, tenant_id, message_id, campaign_id, goal, value, value_minor,
              currency, source, link_index, clicked_at, metadata, occurred_at, created_at
), recorded AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data, created_at)
    SELECT v.tenant_id, v.message_id, v.campaign_id, kind.type,
           jsonb_strip_nulls(jsonb_build_object(
               'conversion_id', v.public_id,
               'message_id', m.public_id,
               'campaign_id', m.campaign_public_id,
               'goal', v.goal,
               'value', $12::text,
               'value_minor', v.value_minor,
               'currency', v.currency,
               'source', v.source,
               'link_index', v.link_index,
               'clicked_at', v.clicked_at,
               'occurred_at', v.occurred_at))
           || CASE WHEN v.metadata = '{}' THEN '{}'::jsonb
                   ELSE jsonb_build_object('metadata', v.metadata) END,
           v.occurred_at
    FROM conversion v
    JOIN m ON m.id = v.message_id
    CROSS JOIN (VALUES (1, 'goal.converted'), (2, 'revenue.recorded')) AS kind(ord, type)
    WHERE kind.type = 'goal.converted' OR v.value_minor > 0
    ORDER BY kind.ord
)
SELECT v.public_id AS id, m.public_id AS message_id, m.campaign_public_id AS campaign_id,
       v.goal, v.value, v.value_minor, v.currency, v.source, v.link_index, v.clicked_at,
       v.metadata, v.occurred_at, v.created_at
FROM conversion v JOIN m ON m.id = v.message_id;

-- name: list_conversions
-- Newest first, keyset-paginated on the public id (time-ordered, unique) through
-- conversions_tenant_idx; the campaign filter names the campaign by its public id. One extra
-- row is fetched to know whether there is a next page.
SELECT v.public_id AS id, m.public_id AS message_id, c.public_id AS campaign_id, v.goal,
       v.value, v.value_minor, v.currency, v.source, v.link_index, v.clicked_at, v.metadata,
       v.occurred_at, v.created_at
FROM conversions v
JOIN messages m ON m.id = v.message_id
LEFT JOIN campaigns c ON c.id = v.campaign_id
WHERE v.tenant_id = $1 AND ($2::text IS NULL OR v.public_id < $2)
  AND ($4::text IS NULL OR c.public_id = $4)
ORDER BY v.public_id DESC
LIMIT $3;
