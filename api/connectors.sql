-- name: insert_connector
INSERT INTO connectors (tenant_id, platform, secret_sealed, sequence, template_id, tags)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING public_id AS id, platform, sequence, template_id, tags, created_at;

-- name: list_connectors
-- Newest first, keyset-paginated on the public id; the secret never leaves the table.
SELECT public_id AS id, platform, sequence, template_id, tags, created_at
FROM connectors
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: delete_connector
DELETE FROM connectors WHERE tenant_id = $1 AND public_id = $2 RETURNING public_id AS id;

-- name: find_connector
-- An inbound webhook: the connector its URL names, with the tenant row it acts in (its mode)
-- and the account's tier.
SELECT c.id, c.tenant_id, c.platform, c.secret_sealed, c.sequence, c.template_id, c.tags,
       t.mode, a.id AS account_id, a.tier
FROM connectors c
JOIN tenants t ON t.id = c.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE c.public_id = $1;

-- name: record_delivery
INSERT INTO connector_deliveries (connector_id, delivery_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING delivery_id;

-- name: prune_deliveries
-- Housekeeping: past a week no platform retries a delivery any more.
DELETE FROM connector_deliveries WHERE received_at < now() - interval '7 days';
