-- The circuit breaker beyond campaigns: rolling bounce and complaint rates per sending
-- identity, per sending domain (a tenant's From domain) and per tenant, each paused when its
-- rate passes the limit. An identity is paused on its row (the identity claim holds its
-- messages); a domain or a whole tenant is paused by a sending_holds row, and its waiting
-- messages are set 'paused' as a paused campaign's are, new ones too (a trigger), until the
-- hold is lifted by hand (POST /api/v1/sending/pauses/{id}/resume).

-- Hourly counts of what the breaker reads, per scope and key ('identity': the identity's id;
-- 'domain': tenant id and From domain; 'tenant': the tenant id), kept by a trigger on events
-- like campaign_stats, so a check reads (hours x types) rows per key.
CREATE TABLE sending_stats (
    scope  text NOT NULL CHECK (scope IN ('identity', 'domain', 'tenant')),
    key    text NOT NULL,
    bucket timestamptz NOT NULL,
    type   text NOT NULL,
    total  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key, bucket, type)
);
CREATE INDEX sending_stats_bucket_idx ON sending_stats (bucket);

CREATE FUNCTION sending_stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sending_stats AS s (scope, key, bucket, type, total)
    SELECT scope, key, bucket, type, count(*)
    FROM (
        SELECT k.scope, k.key, date_trunc('hour', e.created_at, 'UTC') AS bucket, e.type
        FROM inserted_events e
        JOIN messages m ON m.id = e.message_id
        CROSS JOIN LATERAL (VALUES
            ('identity', m.identity_id::text),
            ('domain', m.tenant_id || ':' || lower(split_part(m.from_email, '@', 2))),
            ('tenant', m.tenant_id::text)) AS k (scope, key)
        WHERE e.type IN ('email.delivered', 'email.bounced', 'email.complained')
          AND k.key IS NOT NULL
    ) rows
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (scope, key, bucket, type) DO UPDATE SET total = s.total + EXCLUDED.total;
    RETURN NULL;
END $$;

CREATE TRIGGER events_sending_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION sending_stats_rollup();

-- A paused sending domain or tenant. One live hold per (tenant, scope, key).
CREATE TABLE sending_holds (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id  text NOT NULL DEFAULT public_id('pause'),
    tenant_id  bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    scope      text NOT NULL CHECK (scope IN ('domain', 'tenant')),
    key        text NOT NULL,  -- the domain; '' for the tenant itself
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sending_holds_key_idx ON sending_holds (tenant_id, scope, key);

-- A message queued (or due again: a deferral, a campaign's resume, a release) while its
-- domain or tenant is paused waits with the others, whoever writes it. The WHEN clause keeps
-- the MTA's own status changes (to 'sending', 'sent') from calling the function at all.
CREATE FUNCTION messages_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM sending_holds h
        WHERE h.tenant_id = NEW.tenant_id
          AND (h.scope = 'tenant'
               OR h.key = lower(split_part(NEW.from_email, '@', 2)))) THEN
        NEW.status := 'paused';
        NEW.held_reason := 'sending paused';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER messages_held BEFORE INSERT OR UPDATE OF status ON messages
    FOR EACH ROW WHEN (NEW.status IN ('queued', 'deferred'))
    EXECUTE FUNCTION messages_held();

-- Every scope's check in one call: the identities, domains and tenants it paused just now,
-- with their reasons. Idempotent across MTA processes: an identity still 'active' or a key
-- without a hold is paused by the first to get to it. `scopes` names the scopes checked.
-- A broader scope leaves out what a narrower pause already stopped: a domain's and a
-- tenant's counts are net of their paused identities' and paused campaigns' (a campaign's
-- From domain is its from_email's), so one bad campaign or mailbox, once paused, does not
-- pause its whole domain or tenant; a message both of a paused identity and of a paused
-- campaign is taken off twice, which only makes the broader scope more lenient (counts never
-- go below zero).
CREATE FUNCTION sending_breaker(scopes text[], window_hours float8, min_sample bigint,
                                max_bounce float8, max_complaint float8)
RETURNS TABLE (scope text, key text, tenant_id bigint, reason text) LANGUAGE sql AS $$
    WITH since AS (
        SELECT date_trunc('hour', now() - make_interval(secs => window_hours * 3600), 'UTC')
            AS bucket
    ), raw AS (
        SELECT s.scope, s.key,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.delivered'), 0) AS delivered,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced'), 0) AS bounced,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.complained'), 0)
                   AS complained
        FROM sending_stats s, since
        WHERE s.scope = ANY (scopes) AND s.bucket >= since.bucket
        GROUP BY s.scope, s.key
    ), stopped AS (
        -- What narrower pauses already stopped, per tenant and From domain.
        SELECT i.tenant_id, lower(split_part(i.email, '@', 2)) AS domain, st.type, st.total
        FROM identities i
        JOIN sending_stats st ON st.scope = 'identity' AND st.key = i.id::text
        CROSS JOIN since
        WHERE i.status = 'paused' AND st.bucket >= since.bucket
        UNION ALL
        SELECT c.tenant_id, lower(split_part(c.from_email, '@', 2)), cs.type, cs.total
        FROM campaigns c
        JOIN campaign_stats cs ON cs.campaign_id = c.id
        CROSS JOIN since
        WHERE c.status = 'paused' AND cs.bucket >= since.bucket
          AND cs.type IN ('email.delivered', 'email.bounced', 'email.complained')
    ), stopped_by_key AS (
        SELECT 'domain' AS scope, tenant_id || ':' || domain AS key, type, sum(total) AS total
        FROM stopped GROUP BY 1, 2, 3
        UNION ALL
        SELECT 'tenant', tenant_id::text, type, sum(total) FROM stopped GROUP BY 1, 2, 3
    ), rates AS (
        SELECT r.scope, r.key,
               greatest(r.delivered - coalesce(sum(x.total)
                   FILTER (WHERE x.type = 'email.delivered'), 0), 0) AS delivered,
               greatest(r.bounced - coalesce(sum(x.total)
                   FILTER (WHERE x.type = 'email.bounced'), 0), 0) AS bounced,
               greatest(r.complained - coalesce(sum(x.total)
                   FILTER (WHERE x.type = 'email.complained'), 0), 0) AS complained
        FROM raw r
        LEFT JOIN stopped_by_key x ON x.scope = r.scope AND x.key = r.key
        GROUP BY r.scope, r.key, r.delivered, r.bounced, r.complained
    ), tripped AS (
        SELECT r.scope, r.key, r.delivered + r.bounced AS attempted,
               r.bounced::float8 / (r.delivered + r.bounced) AS bounce_rate,
               r.complained::float8 / greatest(r.delivered, 1) AS complaint_rate,
               CASE WHEN r.bounced::float8 / (r.delivered + r.bounced) > max_bounce
                    THEN format('bounce rate %s%% over %s messages (limit %s%%)',
                                round((r.bounced * 100.0 / (r.delivered + r.bounced))::numeric,
                                      2),
                                r.delivered + r.bounced,
                                round((max_bounce * 100)::numeric, 2))
                    ELSE format('complaint rate %s%% over %s messages (limit %s%%)',
                                round((r.complained * 100.0 / greatest(r.delivered, 1))::numeric,
                                      3),
                                r.delivered + r.bounced,
                                round((max_complaint * 100)::numeric, 3)) END AS reason
        FROM rates r
        WHERE r.delivered + r.bounced >= greatest(min_sample, 1)
          AND (r.bounced::float8 / (r.delivered + r.bounced) > max_bounce
               OR r.complained::float8 / greatest(r.delivered, 1) > max_complaint)
    ), paused_identities AS (
        UPDATE identities i
        SET status = 'paused', paused_reason = t.reason, paused_at = now(), updated_at = now()
        FROM tripped t
        WHERE t.scope = 'identity' AND i.id = t.key::bigint AND i.status = 'active'
        RETURNING i.id, i.tenant_id, i.public_id, t.reason, t.bounce_rate, t.complaint_rate,
                  t.attempted
    ), holds AS (
        INSERT INTO sending_holds (tenant_id, scope, key, reason)
        SELECT split_part(t.key, ':', 1)::bigint, t.scope,
               CASE WHEN t.scope = 'domain' THEN split_part(t.key, ':', 2) ELSE '' END,
               t.reason
        FROM tripped t
        WHERE t.scope IN ('domain', 'tenant')
        ON CONFLICT (tenant_id, scope, key) DO NOTHING
        RETURNING id, public_id, tenant_id, scope, key, reason
    ), held AS (
        UPDATE messages m
        SET status = 'paused', held_reason = 'sending paused', updated_at = now()
        FROM holds h
        WHERE m.tenant_id = h.tenant_id AND m.status IN ('queued', 'deferred')
          AND (h.scope = 'tenant' OR lower(split_part(m.from_email, '@', 2)) = h.key)
        RETURNING m.id
    ), announced AS (
        INSERT INTO events (tenant_id, type, data)
        SELECT p.tenant_id, 'sending.paused',
               jsonb_build_object('scope', 'identity', 'identity_id', p.public_id,
                                  'reason', p.reason,
                                  'bounce_rate', round(p.bounce_rate::numeric, 4),
                                  'complaint_rate', round(p.complaint_rate::numeric, 5),
                                  'messages', p.attempted, 'window_hours', window_hours)
        FROM paused_identities p
        UNION ALL
        SELECT h.tenant_id, 'sending.paused',
               jsonb_build_object('scope', h.scope, 'pause_id', h.public_id,
                                  'domain', nullif(h.key, ''), 'reason', h.reason,
                                  'window_hours', window_hours)
        FROM holds h
        RETURNING id
    )
    SELECT 'identity', p.public_id, p.tenant_id, p.reason FROM paused_identities p
    UNION ALL
    SELECT h.scope, coalesce(nullif(h.key, ''), h.tenant_id::text), h.tenant_id, h.reason
    FROM holds h
$$;

-- Warm-up: once a day, an identity on a ramp grows by its step if in the last day it sent and
-- stayed under the breaker's limits; a day it sent nothing, was paused or sent badly does not
-- count, so the ramp waits rather than reach full volume untested. Answers the identities
-- that grew. Run by the MTA's breaker task; a day is counted once whoever runs it.
CREATE FUNCTION advance_warmups(max_bounce float8, max_complaint float8)
RETURNS TABLE (identity_id bigint, day integer) LANGUAGE sql AS $$
    WITH due AS (
        SELECT i.id,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.delivered'), 0) AS delivered,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced'), 0) AS bounced,
               coalesce(sum(s.total) FILTER (WHERE s.type = 'email.complained'), 0)
                   AS complained
        FROM identities i
        LEFT JOIN sending_stats s
            ON s.scope = 'identity' AND s.key = i.id::text
           AND s.bucket >= date_trunc('hour', now() - interval '1 day', 'UTC')
        WHERE i.warmup_start IS NOT NULL
          AND coalesce(i.warmup_counted_on, i.created_at::date) < current_date
        GROUP BY i.id
    )
    UPDATE identities i
    SET warmup_day = i.warmup_day + CASE
            WHEN i.status = 'active' AND d.delivered + d.bounced > 0
                 AND d.bounced::float8 / (d.delivered + d.bounced) <= max_bounce
                 AND d.complained::float8 / greatest(d.delivered, 1) <= max_complaint
            THEN 1 ELSE 0 END,
        warmup_counted_on = current_date
    FROM due d
    WHERE i.id = d.id
    RETURNING i.id, i.warmup_day
$$;
