-- name: recent_events
-- A polling trigger: the tenant's newest events of one type, with what their webhook body
-- shows (the same columns as the tracker's claim_deliveries), newest first through the
-- (tenant_id, type COLLATE "C", public_id) index.
SELECT e.public_id AS event_public_id, e.type AS event_type, e.data AS event_data,
       e.created_at AS event_created_at, e.message_id IS NOT NULL AS has_message,
       e.campaign_id IS NOT NULL AS has_campaign,
       m.public_id AS message_public_id, m.message_id AS rfc_message_id, m.recipient,
       m.tags AS message_tags, m.metadata AS message_metadata,
       c.public_id AS campaign_public_id, c.name AS campaign_name
FROM events e
LEFT JOIN messages m ON m.id = e.message_id
LEFT JOIN campaigns c ON c.id = e.campaign_id
WHERE e.tenant_id = $1 AND (e.type COLLATE "C") = $2
ORDER BY e.public_id DESC
LIMIT $3;

-- name: contact_by_email
SELECT id, public_id, email, first_name, last_name, company, custom_fields, tags, created_at,
       updated_at
FROM contacts WHERE tenant_id = $1 AND email = lower($2);
