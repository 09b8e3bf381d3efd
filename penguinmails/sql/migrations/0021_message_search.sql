-- Searching messages and reading the event log through the API (GET /messages, GET /events).
-- Both page newest first by public id, whose leading hex digits are the creation time, so
-- every filter gets an index that ends in public_id: the planner walks it backwards and stops
-- after one page instead of sorting a tenant's ten million rows. since/until become a range
-- on the same column (api/messages.sql says how), so they need no index of their own.

-- Migration 0019 adds the same column; IF NOT EXISTS lets either run first.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS messages_tags_idx ON messages USING gin (tags);

-- The list without a filter uses messages_public_id_idx (tenant_id, public_id) of 0013.
CREATE INDEX messages_recipient_search_idx ON messages (tenant_id, lower(recipient), public_id);
CREATE INDEX messages_status_search_idx ON messages (tenant_id, status, public_id);
-- A campaign belongs to one tenant, so its id alone narrows to the tenant's rows.
CREATE INDEX messages_campaign_search_idx ON messages (campaign_id, public_id)
    WHERE campaign_id IS NOT NULL;

-- Events had no public-id index (0013: never looked up by id); the log pages by it now.
-- Three more entries per event written: the price of a log that answers each filter from an
-- index. `type` is compared in the C collation so a prefix (`email.*`) is a plain range.
CREATE INDEX events_public_id_idx ON events (tenant_id, public_id);
CREATE INDEX events_type_search_idx ON events (tenant_id, (type COLLATE "C"), public_id);
CREATE INDEX events_campaign_search_idx ON events (campaign_id, public_id)
    WHERE campaign_id IS NOT NULL;
-- A message's events: events_message_idx (message_id) of 0001; a message has a handful.
