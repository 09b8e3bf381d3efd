-- Sending domains over the API (api/domains.py).

-- name: domain_owner
-- The account (live tenant row) a sending domain belongs to, if it is one.
SELECT tenant_id FROM sending_domains WHERE domain = $1 ORDER BY id LIMIT 1;

-- name: domain_checked_at
SELECT checked_at FROM domain_verifications WHERE domain = $1;

-- name: domain_verification
-- The stored result the API's door reads: by domain, for the owning account only.
SELECT domain, status, sending_allowed, checks, checked_at
FROM domain_verifications
WHERE domain = $1 AND tenant_id = $2;
