-- Shaping state shared by every MTA process (mta/shared.py, migration 0026).

-- name: reserve_tokens
-- Reserve $4 messages of key $1's budget ($2 a second, at most $3 saved up): refill by the
-- time since the last reservation, then take, going below zero if need be. The caller waits
-- -tokens / rate seconds when the result is negative. Primary-key upsert, one row lock.
INSERT INTO shaping_rates AS r (key, tokens, stamp)
VALUES ($1, $3::float8 - $4, clock_timestamp())
ON CONFLICT (key) DO UPDATE
SET tokens = least($3::float8,
                   r.tokens + extract(epoch FROM clock_timestamp() - r.stamp) * $2::float8)
             - $4,
    stamp = clock_timestamp()
RETURNING tokens;

-- name: refund_tokens
-- Give back a reservation the caller will not use (it gives the message back instead of
-- waiting that long).
UPDATE shaping_rates SET tokens = tokens + $2 WHERE key = $1;

-- name: active_suspensions
-- What holds now, read by every process about once a second (a handful of rows).
SELECT key, action, until, rule, reply, max_connections, rate_per_second
FROM shaping_suspensions
WHERE until > now();

-- name: suspend
-- An automation rule fired: hold scope $1 until now + $3 seconds (never shortening one in
-- force), and when no suspension of it was in force before, write `delivery.throttled` for
-- the message whose reply fired it ($8) - once per episode however many processes and
-- messages see the same reply.
WITH prior AS (
    SELECT until FROM shaping_suspensions WHERE key = $1 AND until > now()
), saved AS (
    INSERT INTO shaping_suspensions AS s (key, action, until, rule, reply, max_connections,
                                          rate_per_second, created_at)
    VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6, $7, now())
    ON CONFLICT (key) DO UPDATE
    SET action = EXCLUDED.action, until = greatest(s.until, EXCLUDED.until),
        rule = EXCLUDED.rule, reply = EXCLUDED.reply,
        max_connections = EXCLUDED.max_connections,
        rate_per_second = EXCLUDED.rate_per_second,
        created_at = CASE WHEN s.until > now() THEN s.created_at ELSE now() END
    RETURNING until
), announced AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
    SELECT m.tenant_id, m.id, m.campaign_id, 'delivery.throttled',
           jsonb_build_object('scope', $1::text, 'action', $2::text, 'rule', $4::text,
                              'reply', $5::text,
                              'until', to_char((SELECT until FROM saved) AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
           || $9::jsonb
    FROM messages m
    WHERE m.id = $8 AND NOT EXISTS (SELECT 1 FROM prior)
    RETURNING id
)
SELECT (SELECT until FROM saved) AS until, EXISTS (SELECT 1 FROM announced) AS announced;

-- name: lift_suspension
-- An operator ends a suspension or throttle early (`penguinmails shaping lift KEY`).
DELETE FROM shaping_suspensions WHERE key = $1 RETURNING key;

-- name: note_domain_site
-- Which site and provider a destination domain resolved to, written when it changes (the
-- process remembers what it wrote), for status and metrics by site and provider.
INSERT INTO domain_sites (domain, site, provider, seen_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (domain) DO UPDATE
SET site = EXCLUDED.site, provider = EXCLUDED.provider, seen_at = now();

-- name: count_source_volume
-- Count one delivery of warming source $1 toward $2 on day $3, only while under cap $4: no
-- row back means the day's volume is spent. One primary-key upsert, atomic across processes.
INSERT INTO source_volume AS v (source, bucket, day, sent)
VALUES ($1, $2, $3, 1)
ON CONFLICT (source, bucket, day) DO UPDATE
SET sent = v.sent + 1
WHERE v.sent < $4
RETURNING sent;

-- name: tenant_name
-- A tenant row's name, for [mta] tenant_pools (the worker remembers it).
SELECT name FROM tenants WHERE id = $1;

-- name: reserve_tokens_many
-- reserve_tokens for several keys in one round trip: $1 keys, $2 rates, $3 bursts, $4 how
-- many each. A key seen for the first time starts with its burst; two processes inserting
-- the same new key at once leave it out of one's answer, which then asks again.
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[])
        AS w(key, rate, burst, n)
), updated AS (
    UPDATE shaping_rates r
    SET tokens = least(w.burst,
                       r.tokens + extract(epoch FROM clock_timestamp() - r.stamp) * w.rate)
                 - w.n,
        stamp = clock_timestamp()
    FROM wanted w
    WHERE r.key = w.key
    RETURNING r.key, r.tokens
), inserted AS (
    INSERT INTO shaping_rates (key, tokens, stamp)
    SELECT w.key, w.burst - w.n, clock_timestamp()
    FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM shaping_rates r WHERE r.key = w.key)
    ON CONFLICT (key) DO NOTHING
    RETURNING key, tokens
)
SELECT key, tokens FROM updated
UNION ALL
SELECT key, tokens FROM inserted;

-- name: campaign_breaker
-- The circuit breaker's check (migration 0029): the campaigns it paused just now, and why.
SELECT campaign_id, reason FROM campaign_breaker($1, $2, $3, $4);

-- name: sending_breaker
-- The same check for identities, sending domains and tenants (migration 0031): what it
-- paused just now, and why. $1: the scopes to check.
SELECT scope, key, reason FROM sending_breaker($1, $2, $3, $4, $5);

-- name: advance_warmups
-- Identities on a warm-up ramp grow once a day while healthy (migration 0031).
SELECT identity_id, day FROM advance_warmups($1, $2);

-- name: paused_campaigns
-- What is paused now, by hand or by the circuit breaker: campaigns, identities (paused or
-- archived) and sending holds of a domain or a tenant. A message of any of them already
-- leased by a worker goes back rather than out. Read with the suspensions, about once a
-- second.
SELECT 'campaign' AS kind, id AS id, NULL::bigint AS tenant_id, NULL AS domain
FROM campaigns WHERE status = 'paused'
UNION ALL
SELECT 'identity', id, NULL, NULL FROM identities WHERE status <> 'active'
UNION ALL
SELECT 'hold', NULL, tenant_id, key FROM sending_holds;
