-- name: user_is_operator
-- Whether a dashboard user may see the installation's queue (migration 0035).
SELECT operator FROM users WHERE id = $1;

-- name: sending_rates
-- The tenant row's bounce and complaint rates over the circuit breaker's window, from the
-- rollup the breaker reads (sending_stats, migration 0031) and with its formulas: bounce rate
-- bounced / (delivered + bounced), complaint rate complained / delivered; the tenant as a
-- whole first, then each From domain. $2: the window in hours. Reads the window's buckets
-- through sending_stats_bucket_idx, so its cost grows with the window's traffic.
WITH since AS (
    SELECT date_trunc('hour', now() - make_interval(secs => $2::float8 * 3600), 'UTC') AS bucket
)
SELECT s.scope,
       CASE WHEN s.scope = 'domain' THEN split_part(s.key, ':', 2) ELSE '' END AS name,
       coalesce(sum(s.total) FILTER (WHERE s.type = 'email.delivered'), 0)::bigint AS delivered,
       coalesce(sum(s.total) FILTER (WHERE s.type = 'email.bounced'), 0)::bigint AS bounced,
       coalesce(sum(s.total) FILTER (WHERE s.type = 'email.complained'), 0)::bigint
           AS complained
FROM sending_stats s, since
WHERE s.bucket >= since.bucket
  AND ((s.scope = 'tenant' AND s.key = $1::bigint::text)
       OR (s.scope = 'domain' AND split_part(s.key, ':', 1) = $1::bigint::text))
GROUP BY 1, 2
ORDER BY 1 DESC, 2;
