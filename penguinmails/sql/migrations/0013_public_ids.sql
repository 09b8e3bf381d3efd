-- Public ids: what the API, events and webhooks show for a row, instead of its integer key.
-- `campaign_018f3c2a9b1e4d2c7a9e0b1f3c5d7e9f` is the prefix, 12 hex digits of the creation
-- time in milliseconds (so ids sort by creation, and listings can page by them), then 80
-- random bits (so an id cannot be guessed from another). Integer keys stay the joins' and
-- the queue's; only these columns cross the API boundary. Every lookup names the tenant, so
-- the indexes are (tenant_id, public_id): a lookup by id, and keyset pages in id order.
CREATE FUNCTION public_id(prefix text, at timestamptz DEFAULT clock_timestamp())
RETURNS text LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT prefix || '_'
        || lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
        || substr(md5(gen_random_uuid()::text), 1, 20)
$$;

-- Existing rows get ids from their own creation time, so the order of old and new holds.
ALTER TABLE campaigns ADD COLUMN public_id text;
UPDATE campaigns SET public_id = public_id('campaign', created_at);
ALTER TABLE campaigns ALTER COLUMN public_id SET DEFAULT public_id('campaign'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX campaigns_public_id_idx ON campaigns (tenant_id, public_id);

ALTER TABLE messages ADD COLUMN public_id text;
UPDATE messages SET public_id = public_id('msg', created_at);
ALTER TABLE messages ALTER COLUMN public_id SET DEFAULT public_id('msg'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX messages_public_id_idx ON messages (tenant_id, public_id);

ALTER TABLE contacts ADD COLUMN public_id text;
UPDATE contacts SET public_id = public_id('contact', created_at);
ALTER TABLE contacts ALTER COLUMN public_id SET DEFAULT public_id('contact'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX contacts_public_id_idx ON contacts (tenant_id, public_id);

ALTER TABLE webhooks ADD COLUMN public_id text;
UPDATE webhooks SET public_id = public_id('wh', created_at);
ALTER TABLE webhooks ALTER COLUMN public_id SET DEFAULT public_id('wh'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX webhooks_public_id_idx ON webhooks (tenant_id, public_id);

ALTER TABLE api_keys ADD COLUMN public_id text;
UPDATE api_keys SET public_id = public_id('key', created_at);
ALTER TABLE api_keys ALTER COLUMN public_id SET DEFAULT public_id('key'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX api_keys_public_id_idx ON api_keys (tenant_id, public_id);

ALTER TABLE users ADD COLUMN public_id text;
UPDATE users SET public_id = public_id('user', created_at);
ALTER TABLE users ALTER COLUMN public_id SET DEFAULT public_id('user'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX users_public_id_idx ON users (tenant_id, public_id);

ALTER TABLE webhook_deliveries ADD COLUMN public_id text;
UPDATE webhook_deliveries SET public_id = public_id('whd', created_at);
ALTER TABLE webhook_deliveries ALTER COLUMN public_id SET DEFAULT public_id('whd'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX webhook_deliveries_public_id_idx ON webhook_deliveries (tenant_id, public_id);

ALTER TABLE sandbox_messages ADD COLUMN public_id text;
UPDATE sandbox_messages SET public_id = public_id('cap', received_at);
ALTER TABLE sandbox_messages ALTER COLUMN public_id SET DEFAULT public_id('cap'),
    ALTER COLUMN public_id SET NOT NULL;
CREATE UNIQUE INDEX sandbox_messages_public_id_idx ON sandbox_messages (tenant_id, public_id);

-- Events are never looked up by id (a receiver dedupes on it), so no index: the hot path
-- writes two or three events a message and pays only for the column.
ALTER TABLE events ADD COLUMN public_id text;
UPDATE events SET public_id = public_id('evt', created_at);
ALTER TABLE events ALTER COLUMN public_id SET DEFAULT public_id('evt'),
    ALTER COLUMN public_id SET NOT NULL;

-- campaign.completed carried the integer key in its data; it now carries the campaign's name,
-- status and recipient count like the other campaign.* events (the webhook payload names the
-- campaign by its public id; older rows' integer is never shown).
CREATE OR REPLACE FUNCTION campaign_try_complete(cid bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM campaigns WHERE id = cid AND status = 'sending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM messages
               WHERE campaign_id = cid AND status IN ('queued', 'sending', 'deferred', 'paused'))
    THEN
        RETURN false;
    END IF;
    UPDATE campaigns SET status = 'completed', completed_at = now(), updated_at = now()
    WHERE id = cid;
    INSERT INTO events (tenant_id, campaign_id, type, data)
    SELECT tenant_id, id, 'campaign.completed',
           jsonb_build_object('name', name, 'status', 'completed',
                              'recipient_count', recipient_count)
    FROM campaigns WHERE id = cid;
    RETURN true;
END $$;
