-- name: record_hits
-- A batch of opens and clicks in one statement (and one commit). Hits for messages that no
-- longer exist are dropped by the join. A hit is a machine's when the request said so ($6)
-- or when it came within seconds of delivery ($12 for opens, $13 for clicks). Each hit gets
-- the message's running open and click counts from engagement_counts: its total after this
-- batch, less this batch's hits that come after the hit. The UPSERT's row lock orders
-- concurrent batches for a message (across tracker processes too), so the counts are exact
-- and exactly one hit of each kind sees 1: that is the first, `unique`. Rows are upserted in
-- message order, so two batches take those locks in the same order and cannot deadlock.
-- Device type and country ($9-$11) were decided from the request; their keys are always
-- present (null when unknown) because the API's breakdowns group by them. Inserting into
-- events fires the webhook fan-out trigger, so the deliveries commit with the hits.
WITH hit AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                         $6::text[], $7::int[], $8::text[], $9::text[], $10::text[],
                         $11::text[]) WITH ORDINALITY
        AS h(message_id, type, at, user_agent, ip_prefix, machine_reason, link_index, url,
             device_type, country, country_code, ord)
), known AS (
    SELECT h.*, m.tenant_id, m.campaign_id,
           coalesce(h.machine_reason,
                    CASE WHEN h.at < m.sent_at + make_interval(
                                 secs => CASE h.type WHEN 'email.clicked' THEN $13::float8
                                                     ELSE $12::float8 END)
                         THEN 'soon_after_delivery' END) AS reason,
           -- This batch's opens (clicks) of the message up to and including this hit, and in all.
           count(*) FILTER (WHERE h.type = 'email.opened')
               OVER (PARTITION BY h.message_id ORDER BY h.ord) AS opens_so_far,
           count(*) FILTER (WHERE h.type = 'email.clicked')
               OVER (PARTITION BY h.message_id ORDER BY h.ord) AS clicks_so_far,
           count(*) FILTER (WHERE h.type = 'email.opened')
               OVER (PARTITION BY h.message_id) AS opens_in_batch,
           count(*) FILTER (WHERE h.type = 'email.clicked')
               OVER (PARTITION BY h.message_id) AS clicks_in_batch
    FROM hit h
    JOIN messages m ON m.id = h.message_id
), counted AS (
    INSERT INTO engagement_counts AS c (message_id, opens, clicks)
    SELECT message_id, max(opens_in_batch), max(clicks_in_batch)
    FROM known GROUP BY message_id ORDER BY message_id
    ON CONFLICT (message_id) DO UPDATE
    SET opens = c.opens + EXCLUDED.opens, clicks = c.clicks + EXCLUDED.clicks
    RETURNING message_id, opens, clicks
), classified AS (
    SELECT k.*,
           n.opens - k.opens_in_batch + k.opens_so_far AS open_count,
           n.clicks - k.clicks_in_batch + k.clicks_so_far AS click_count
    FROM known k
    JOIN counted n ON n.message_id = k.message_id
), firsts AS (
    SELECT c.*,
           CASE c.type WHEN 'email.clicked' THEN c.click_count ELSE c.open_count END = 1
               AS is_unique
    FROM classified c
)
INSERT INTO events (tenant_id, message_id, campaign_id, type, data, created_at, is_unique,
                    is_machine)
SELECT tenant_id, message_id, campaign_id, type,
       jsonb_strip_nulls(jsonb_build_object(
           'unique', is_unique,
           'machine', reason IS NOT NULL,
           'machine_reason', reason,
           'user_agent', user_agent,
           'ip_prefix', ip_prefix,
           'link_index', link_index,
           'url', url))
       || jsonb_build_object(
           'device_type', device_type,
           'country', country,
           'country_code', country_code,
           'open_count', open_count,
           'click_count', click_count),
       at, is_unique, reason IS NOT NULL
FROM firsts
ORDER BY ord;

-- name: unsubscribe
-- RFC 8058 one-click (or the page's button): suppress the address for the tenant and record
-- the event, in one statement. The event is written once per message however often the
-- link is posted (mail providers retry, people double-click); the suppression keeps the
-- first reason it was given. Returns nothing when the message no longer exists.
WITH m AS (
    SELECT id, tenant_id, campaign_id, recipient FROM messages WHERE id = $1
), suppressed AS (
    INSERT INTO suppressions (tenant_id, email, reason, detail)
    SELECT tenant_id, lower(recipient), 'unsubscribed', $2 FROM m
    ON CONFLICT DO NOTHING
), first_time AS (
    INSERT INTO engagement_firsts (message_id, type)
    SELECT id, 'email.unsubscribed' FROM m
    ON CONFLICT DO NOTHING
    RETURNING message_id
), recorded AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data, is_unique)
    SELECT m.tenant_id, m.id, m.campaign_id, 'email.unsubscribed',
           jsonb_strip_nulls(jsonb_build_object('method', $2::text, 'user_agent', $3::text,
                                                'ip_prefix', $4::text)),
           true
    FROM m JOIN first_time f ON f.message_id = m.id
    RETURNING id
)
SELECT m.recipient, (SELECT count(*) FROM recorded) AS recorded FROM m;

-- name: release_stale_deliveries
-- A dispatcher that died mid-delivery leaves its leases behind; once they expire the rows go
-- back to pending without counting an attempt (the request may or may not have been made,
-- and the receiver dedupes on webhook-id either way).
UPDATE webhook_deliveries
SET status = 'pending', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE status = 'delivering' AND lease_expires_at <= now();

-- name: claim_deliveries
-- Lease up to $1 due deliveries to dispatcher $2 for $4 seconds, at most $3 in flight per
-- endpoint (counting every dispatcher's leases), oldest first. Claiming per endpoint through
-- the (webhook_id, next_attempt_at) partial index means an endpoint with a huge backlog gets
-- its $3 slots and no more, so one slow receiver cannot starve the others. SKIP LOCKED lets
-- several dispatchers claim at once. The endpoint and the event ride along with the claim,
-- with the public ids and the few fields of its message and campaign that the payload shows
-- (none of them change after the event, so a retry's body is the same bytes).
WITH busy AS (
    SELECT webhook_id, count(*) AS n
    FROM webhook_deliveries
    WHERE status = 'delivering'
    GROUP BY webhook_id
), room AS (
    SELECT w.id, $3::int - coalesce(b.n, 0)::int AS free
    FROM webhooks w
    LEFT JOIN busy b ON b.webhook_id = w.id
    WHERE w.active AND $3::int - coalesce(b.n, 0)::int > 0
), picked AS (
    SELECT d.id
    FROM room r
    CROSS JOIN LATERAL (
        SELECT id, next_attempt_at FROM webhook_deliveries
        WHERE webhook_id = r.id AND status = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT r.free
        FOR UPDATE SKIP LOCKED
    ) d
    ORDER BY d.next_attempt_at
    LIMIT $1
)
UPDATE webhook_deliveries d
SET status = 'delivering', lease_owner = $2, lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $4::float8), updated_at = now()
FROM picked p, webhooks w, events e
LEFT JOIN messages m ON m.id = e.message_id
LEFT JOIN campaigns c ON c.id = e.campaign_id
WHERE d.id = p.id AND w.id = d.webhook_id AND e.id = d.event_id
RETURNING d.id, d.public_id, d.webhook_id, d.attempts, d.created_at, d.lease_token,
          w.url, w.secret_sealed,
          CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_sealed
          END AS previous_secret_sealed,
          e.public_id AS event_public_id, e.type AS event_type, e.data AS event_data,
          e.created_at AS event_created_at, e.message_id IS NOT NULL AS has_message,
          e.campaign_id IS NOT NULL AS has_campaign,
          m.public_id AS message_public_id, m.message_id AS rfc_message_id, m.recipient,
          m.tags AS message_tags, m.metadata AS message_metadata,
          c.public_id AS campaign_public_id, c.name AS campaign_name;

-- name: delivery_succeeded
-- A 2xx: the delivery is done, and the endpoint's run of failures (if any) is over. The
-- lease token makes a late answer from a dispatcher whose lease was taken over a no-op.
WITH done AS (
    UPDATE webhook_deliveries
    SET status = 'delivered', attempts = attempts + 1, delivered_at = now(),
        last_status_code = $3, last_error = NULL, lease_owner = NULL, lease_token = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE id = $1 AND lease_token = $2 AND status = 'delivering'
    RETURNING webhook_id
)
UPDATE webhooks w
SET failing_since = NULL
FROM done
WHERE w.id = done.webhook_id AND w.failing_since IS NOT NULL;

-- name: delivery_failed
-- A failed attempt: due again in $5 seconds, or failed for good when that would be past the
-- delivery's maximum age $6 (or $7 says it is final, e.g. 410 Gone). The endpoint's failure
-- run starts at its first failure; it is written only then, not on every failure. Returns
-- the new status and how long the endpoint has been failing, for the disable decision.
WITH failed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1,
        status = CASE WHEN $7::bool OR d.created_at + make_interval(secs => $6::float8)
                                       <= now() + make_interval(secs => $5::float8)
                      THEN 'failed' ELSE 'pending' END,
        next_attempt_at = now() + make_interval(secs => $5::float8),
        last_status_code = $3, last_error = $4, lease_owner = NULL, lease_token = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE d.id = $1 AND d.lease_token = $2 AND d.status = 'delivering'
    RETURNING d.webhook_id, d.status
), marked AS (
    UPDATE webhooks w
    SET failing_since = now()
    FROM failed f
    WHERE w.id = f.webhook_id AND w.failing_since IS NULL
    RETURNING w.id, w.failing_since
)
SELECT f.status, f.webhook_id,
       extract(epoch FROM now() - coalesce(m.failing_since, w.failing_since))::float8
           AS failing_for
FROM failed f
JOIN webhooks w ON w.id = f.webhook_id
LEFT JOIN marked m ON m.id = f.webhook_id;

-- name: release_deliveries
-- Shutdown: deliveries whose request was cut short go back to pending untried.
UPDATE webhook_deliveries
SET status = 'pending', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = ANY($1::bigint[]) AND lease_token = ANY($2::uuid[]) AND status = 'delivering';

-- name: disable_endpoint
-- An endpoint that answered 410 Gone or has failed for days is switched off: its backlog is
-- cancelled and a webhook.disabled event is recorded, which the fan-out trigger sends to the
-- tenant's other endpoints (this one is already inactive when the trigger runs).
WITH off AS (
    UPDATE webhooks
    SET active = false, disabled_at = now(), disabled_reason = $2, updated_at = now()
    WHERE id = $1 AND active
    RETURNING id, public_id, tenant_id, url
), cancelled AS (
    UPDATE webhook_deliveries d
    SET status = 'cancelled', last_error = $2, lease_owner = NULL, lease_token = NULL,
        lease_expires_at = NULL, updated_at = now()
    FROM off
    WHERE d.webhook_id = off.id AND d.status IN ('pending', 'delivering')
)
INSERT INTO events (tenant_id, type, data)
SELECT tenant_id, 'webhook.disabled',
       jsonb_build_object('webhook_id', public_id, 'url', url, 'reason', $2::text)
FROM off
RETURNING id;

-- name: webhook_backlog
-- For /metrics: deliveries not yet done, counted through the two partial indexes.
SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM webhook_deliveries WHERE status = 'delivering') AS delivering;

-- name: emit_analytics_updated
-- analytics.updated, at most once a minute per campaign and only when its numbers changed:
-- the campaigns with rollup rows in the last $1 seconds (campaign_stats_bucket_idx) that were
-- not announced within the minute get their totals summed from the rollup (by its primary
-- key) and compared with what was last announced. The UPSERT on campaign_analytics_emitted
-- is the claim: its WHERE is evaluated again on the row as another tracker process left it
-- (ON CONFLICT waits for that process's commit), so of several processes racing for a
-- campaign exactly one writes the row and the event. Rows are claimed in campaign order so
-- two processes cannot deadlock. Counted by the analytics event names: `sent` accepted and
-- queued, `delivered` answered 250 (less those that bounced afterwards, as the API counts
-- them); opened, clicked, unsubscribed and replied count messages (the first of each kind),
-- bounced and complained every event. The fan-out trigger sends the events.
WITH counted(type) AS (
    VALUES ('email.sent'), ('email.delivered'), ('email.bounced.after_delivery'),
           ('email.opened'), ('email.clicked'), ('email.bounced'), ('email.complained'),
           ('email.unsubscribed'), ('email.replied')
), recent AS (
    SELECT DISTINCT s.campaign_id
    FROM campaign_stats s
    WHERE s.bucket >= date_trunc('hour', now() - make_interval(secs => $1::float8))
      AND s.type IN (SELECT type FROM counted)
), due AS (
    SELECT c.id, c.tenant_id
    FROM recent r
    JOIN campaigns c ON c.id = r.campaign_id
    LEFT JOIN campaign_analytics_emitted a ON a.campaign_id = c.id
    WHERE a.campaign_id IS NULL OR a.last_emitted_at < now() - interval '1 minute'
), totals AS (
    SELECT d.id AS campaign_id, d.tenant_id,
           coalesce(sum(s.total) FILTER (WHERE s.type = 'email.sent'), 0)::bigint AS sent,
           coalesce(sum(s.total) FILTER (WHERE s.type = 'email.delivered'), 0)::bigint
             - coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced.after_delivery'),
                        0)::bigint AS delivered,
           coalesce(sum(s.uniq) FILTER (WHERE s.type = 'email.opened'), 0)::bigint AS opened,
           coalesce(sum(s.uniq) FILTER (WHERE s.type = 'email.clicked'), 0)::bigint AS clicked,
           coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced'), 0)::bigint AS bounced,
           coalesce(sum(s.total) FILTER (WHERE s.type = 'email.complained'), 0)::bigint
               AS complained,
           coalesce(sum(s.uniq) FILTER (WHERE s.type = 'email.unsubscribed'), 0)::bigint
               AS unsubscribed,
           coalesce(sum(s.uniq) FILTER (WHERE s.type = 'email.replied'), 0)::bigint AS replied
    FROM due d
    JOIN campaign_stats s ON s.campaign_id = d.id
    WHERE s.type IN (SELECT type FROM counted)
    GROUP BY d.id, d.tenant_id
), numbers AS (
    SELECT campaign_id, tenant_id,
           jsonb_build_object('sent', sent, 'delivered', delivered, 'opened', opened,
                              'clicked', clicked, 'bounced', bounced, 'complained', complained,
                              'unsubscribed', unsubscribed, 'replied', replied) AS analytics
    FROM totals
), claimed AS (
    INSERT INTO campaign_analytics_emitted AS a (campaign_id, analytics, last_emitted_at)
    SELECT campaign_id, analytics, now() FROM numbers ORDER BY campaign_id
    ON CONFLICT (campaign_id) DO UPDATE
    SET analytics = EXCLUDED.analytics, last_emitted_at = EXCLUDED.last_emitted_at
    WHERE a.last_emitted_at < now() - interval '1 minute'
      AND a.analytics IS DISTINCT FROM EXCLUDED.analytics
    RETURNING a.campaign_id, a.analytics
)
INSERT INTO events (tenant_id, campaign_id, type, data)
SELECT n.tenant_id, c.campaign_id, 'analytics.updated', jsonb_build_object('analytics', c.analytics)
FROM claimed c
JOIN numbers n ON n.campaign_id = c.campaign_id
ORDER BY c.campaign_id
RETURNING campaign_id;
