-- The circuit breaker: a sending campaign whose bounce or complaint rate over the last hours
-- passes a threshold is paused as an operator's pause would (its waiting messages leave the
-- MTA's reach), with the reason on the campaign and a `sending.paused` event. Resuming is
-- explicit (POST /api/v1/campaigns/{id}/resume), which clears the reason.
ALTER TABLE campaigns ADD COLUMN paused_reason text;

-- Reads the hourly rollup (campaign_stats), so a check costs (hours x types) rows per sending
-- campaign however many messages it has. Idempotent and safe to run from every MTA process at
-- once: only a campaign still 'sending' is paused, by the first to get to it.
CREATE FUNCTION campaign_breaker(window_hours float8, min_sample bigint,
                                 max_bounce float8, max_complaint float8)
RETURNS TABLE (campaign_id bigint, reason text) LANGUAGE sql AS $$
    WITH rates AS (
        SELECT s.campaign_id,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.delivered'), 0) AS delivered,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced'), 0) AS bounced,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.complained'), 0) AS complained
        FROM campaign_stats s
        JOIN campaigns c ON c.id = s.campaign_id AND c.status = 'sending'
        WHERE s.bucket >= date_trunc('hour', now() - make_interval(secs => window_hours * 3600),
                                     'UTC')
        GROUP BY s.campaign_id
    ), tripped AS (
        SELECT r.campaign_id,
               r.bounced::float8 / (r.delivered + r.bounced) AS bounce_rate,
               r.complained::float8 / greatest(r.delivered, 1) AS complaint_rate,
               r.delivered + r.bounced AS attempted
        FROM rates r
        WHERE r.delivered + r.bounced >= min_sample
          AND (r.bounced::float8 / (r.delivered + r.bounced) > max_bounce
               OR r.complained::float8 / greatest(r.delivered, 1) > max_complaint)
    ), paused AS (
        UPDATE campaigns c
        SET status = 'paused', paused_at = now(), updated_at = now(),
            paused_reason = CASE WHEN t.bounce_rate > max_bounce
                THEN format('bounce rate %s%% over %s messages (limit %s%%)',
                            round((t.bounce_rate * 100)::numeric, 2), t.attempted,
                            round((max_bounce * 100)::numeric, 2))
                ELSE format('complaint rate %s%% over %s messages (limit %s%%)',
                            round((t.complaint_rate * 100)::numeric, 3), t.attempted,
                            round((max_complaint * 100)::numeric, 3)) END
        FROM tripped t
        WHERE c.id = t.campaign_id AND c.status = 'sending'
        RETURNING c.id, c.tenant_id, c.paused_reason, t.bounce_rate, t.complaint_rate,
                  t.attempted
    ), held AS (
        UPDATE messages m SET status = 'paused', updated_at = now()
        FROM paused p
        WHERE m.campaign_id = p.id AND m.status IN ('queued', 'deferred')
        RETURNING m.id
    ), announced AS (
        INSERT INTO events (tenant_id, campaign_id, type, data)
        SELECT p.tenant_id, p.id, 'sending.paused',
               jsonb_build_object('scope', 'campaign', 'reason', p.paused_reason,
                                  'bounce_rate', round(p.bounce_rate::numeric, 4),
                                  'complaint_rate', round(p.complaint_rate::numeric, 5),
                                  'messages', p.attempted, 'window_hours', window_hours)
        FROM paused p
        RETURNING id
    )
    SELECT p.id, p.paused_reason FROM paused p
$$;
