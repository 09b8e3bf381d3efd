-- name: upsert_contact
-- A contact arriving from another system (Zapier, a shop, a CRM): created, or merged into
-- the one with its address: names given win, custom fields merge key by key, tags add on.
-- xmax = 0 only on a row this statement inserted.
INSERT INTO contacts (tenant_id, email, first_name, last_name, company, custom_fields, tags)
VALUES ($1, lower($2), $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, email) DO UPDATE
SET first_name = coalesce(EXCLUDED.first_name, contacts.first_name),
    last_name = coalesce(EXCLUDED.last_name, contacts.last_name),
    company = coalesce(EXCLUDED.company, contacts.company),
    custom_fields = contacts.custom_fields || EXCLUDED.custom_fields,
    tags = contacts.tags || ARRAY(SELECT t FROM unnest(EXCLUDED.tags) AS t
                                  WHERE NOT t = ANY (contacts.tags)),
    updated_at = now()
RETURNING id, public_id, email, first_name, last_name, company, custom_fields, tags,
          created_at, updated_at, xmax = 0 AS created;

-- name: tenant_name
SELECT t.name, a.name AS account FROM tenants t
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE t.id = $1;
