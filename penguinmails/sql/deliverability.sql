-- Sending domains' DNS verification (penguinmails/deliverability.py).

-- name: domain_keys
-- Every stored DKIM key of the domain, newest first: the first of each algorithm signs.
SELECT selector, algorithm, public_key FROM sending_domains WHERE domain = $1 ORDER BY id DESC;

-- name: store_verification
-- The new result, and `domain.verification_failed` for the owning account when a domain that
-- had no failing check ($4 'fail' now; 'pending' never counts) has one now: one statement, so
-- a second API process storing the same transition at the same time waits on the row lock and
-- then sees the already failing status, and the event is recorded once. The account is the
-- domain's owner in sending_domains (its live tenant row); a domain no longer there stores
-- nothing.
WITH owner AS (
    SELECT tenant_id FROM sending_domains WHERE domain = $1 ORDER BY id LIMIT 1
), previous AS (
    SELECT status FROM domain_verifications WHERE domain = $1 FOR UPDATE
), stored AS (
    INSERT INTO domain_verifications AS v
        (domain, tenant_id, return_path_domain, tracking_domain, status, sending_allowed,
         checks, checked_at, return_path_verified, tracking_verified)
    SELECT $1, o.tenant_id, $2, $3, $4, $5, $6::jsonb, now(), $8, $9 FROM owner o
    ON CONFLICT (domain) DO UPDATE
    SET tenant_id = excluded.tenant_id, return_path_domain = excluded.return_path_domain,
        tracking_domain = excluded.tracking_domain, status = excluded.status,
        sending_allowed = excluded.sending_allowed, checks = excluded.checks,
        checked_at = excluded.checked_at, return_path_verified = excluded.return_path_verified,
        tracking_verified = excluded.tracking_verified
    RETURNING v.tenant_id
), announced AS (
    INSERT INTO events (tenant_id, type, data)
    SELECT s.tenant_id, 'domain.verification_failed',
           jsonb_build_object('domain', $1::text, 'sending_allowed', $5::boolean,
                              'failed', $7::jsonb)
    FROM stored s
    WHERE $4 = 'fail' AND EXISTS (SELECT 1 FROM previous p WHERE p.status IN ('pass', 'warn'))
    RETURNING id
)
SELECT (SELECT count(*) FROM announced) AS announced;

-- name: add_missing_verifications
-- A row, never checked, for every sending domain that has none yet: the scheduler then
-- checks domains added with `penguinmails domains add` without anyone asking.
INSERT INTO domain_verifications (domain, tenant_id, return_path_domain, tracking_domain)
SELECT DISTINCT ON (domain) domain, tenant_id, 'bounces.' || domain, 'links.' || domain
FROM sending_domains
ORDER BY domain, id
ON CONFLICT (domain) DO NOTHING;

-- name: claim_due_verifications
-- Results older than $1 seconds, oldest first; checked_at moves forward in the claim, so a
-- second API process's scheduler skips them (and a crash mid-check retries after $1).
UPDATE domain_verifications SET checked_at = now()
WHERE domain IN (
    SELECT domain FROM domain_verifications
    WHERE checked_at < now() - make_interval(secs => $1)
    ORDER BY checked_at
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING domain;
