-- name: insert_endpoint
-- A new endpoint starts active; its sealed secret never leaves the database unsealed except
-- in the one response that created it.
INSERT INTO webhooks (tenant_id, url, description, events, secret_sealed)
VALUES ($1, $2, $3, $4, $5)
RETURNING id AS pk, public_id AS id, tenant_id, url, description, events, active,
          failing_since, disabled_at, disabled_reason, created_at, updated_at;

-- name: list_endpoints
-- A tenant's endpoints newest first, keyset-paginated on the public id (which sorts by
-- creation) through the (tenant_id, public_id) index; $2 is the last id of the page before,
-- $3 the page size. Secrets are not selected.
SELECT public_id AS id, tenant_id, url, description, events, active, failing_since,
       disabled_at, disabled_reason, created_at, updated_at
FROM webhooks
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: get_endpoint
-- The tenant id is part of every lookup: an id from another tenant is simply not found.
SELECT public_id AS id, tenant_id, url, description, events, active, failing_since,
       disabled_at, disabled_reason, created_at, updated_at
FROM webhooks WHERE tenant_id = $1 AND public_id = $2;

-- name: update_endpoint
-- NULL leaves a field as it is. Re-activating clears the failure record, so a repaired
-- endpoint is not disabled again at once for its old failures; pending deliveries that were
-- cancelled when it was disabled stay cancelled (they may be days old).
UPDATE webhooks
SET url = coalesce($3, url),
    events = coalesce($4, events),
    description = coalesce($5, description),
    active = coalesce($6, active),
    failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END,
    disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END,
    disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END,
    updated_at = now()
WHERE tenant_id = $1 AND public_id = $2
RETURNING id AS pk, public_id AS id, tenant_id, url, description, events, active,
          failing_since, disabled_at, disabled_reason, created_at, updated_at;

-- name: cancel_pending_deliveries
-- An endpoint switched off by its owner gets nothing more from its backlog.
UPDATE webhook_deliveries
SET status = 'cancelled', last_error = $2, lease_owner = NULL, lease_token = NULL,
    lease_expires_at = NULL, updated_at = now()
WHERE webhook_id = $1 AND status IN ('pending', 'delivering');

-- name: delete_endpoint
-- Deliveries go with it (ON DELETE CASCADE); events stay.
DELETE FROM webhooks WHERE tenant_id = $1 AND public_id = $2 RETURNING id;

-- name: rotate_secret
-- The old secret keeps signing (as a second signature) for $4 seconds, so receivers can
-- switch over without dropping a delivery.
UPDATE webhooks
SET previous_secret_sealed = secret_sealed,
    previous_secret_expires_at = now() + make_interval(secs => $4),
    secret_sealed = $3,
    updated_at = now()
WHERE tenant_id = $1 AND public_id = $2
RETURNING id AS pk, public_id AS id, tenant_id, url, description, events, active,
          failing_since, disabled_at, disabled_reason, created_at, updated_at,
          previous_secret_expires_at;

-- name: list_deliveries
-- Recent deliveries of one endpoint, newest first, for an API that shows what was sent;
-- $5 keeps only one status (the failed ones, say), NULL all of them.
SELECT d.id AS pk, d.public_id AS id, e.public_id AS event_id, e.type AS event_type,
       d.status, d.attempts, d.next_attempt_at, d.last_status_code, d.last_error,
       d.created_at, d.delivered_at
FROM webhook_deliveries d
JOIN webhooks w ON w.id = d.webhook_id
JOIN events e ON e.id = d.event_id
WHERE w.tenant_id = $1 AND w.public_id = $2 AND ($3::bigint IS NULL OR d.id < $3)
  AND ($5::text IS NULL OR d.status = $5)
ORDER BY d.id DESC
LIMIT $4;

-- name: retry_delivery
-- One failed or cancelled delivery due again now, asked for by hand: its attempts and its
-- age stay as they were, so one more failure ends it again (delivery_failed's maximum age)
-- rather than starting a new run of retries. Only while its endpoint is active (a disabled
-- endpoint's backlog is cancelled, and would be again). Returns the delivery as it is now,
-- whether this call re-queued it, and wakes idle dispatchers (the fan-out's NOTIFY) if so.
WITH target AS (
    SELECT d.id, d.status, w.active
    FROM webhook_deliveries d
    JOIN webhooks w ON w.id = d.webhook_id
    WHERE w.tenant_id = $1 AND w.public_id = $2 AND d.public_id = $3
    FOR UPDATE OF d
), retried AS (
    UPDATE webhook_deliveries d
    SET status = 'pending', next_attempt_at = now(), updated_at = now()
    FROM target t
    WHERE d.id = t.id AND t.active AND t.status IN ('failed', 'cancelled')
    RETURNING d.id, d.status, d.next_attempt_at
), woken AS (
    SELECT pg_notify('penguinmails_webhooks', '') FROM retried
)
SELECT d.public_id AS id, e.public_id AS event_id, e.type AS event_type,
       coalesce(r.status, d.status) AS status, d.attempts,
       coalesce(r.next_attempt_at, d.next_attempt_at) AS next_attempt_at,
       d.last_status_code, d.last_error, d.created_at, d.delivered_at,
       t.active, r.id IS NOT NULL AS retried, (SELECT count(*) FROM woken) AS woken
FROM target t
JOIN webhook_deliveries d ON d.id = t.id
JOIN events e ON e.id = d.event_id
LEFT JOIN retried r ON r.id = t.id;
