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
-- Events are never looked up by id (a receiver dedupes on it), so they get no index: the hot
-- path writes two or three events a message and pays only for the column.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('campaigns', 'campaign', 'created_at'),
        ('messages', 'msg', 'created_at'),
        ('contacts', 'contact', 'created_at'),
        ('webhooks', 'wh', 'created_at'),
        ('api_keys', 'key', 'created_at'),
        ('users', 'user', 'created_at'),
        ('webhook_deliveries', 'whd', 'created_at'),
        ('sandbox_messages', 'cap', 'received_at'),
        ('events', 'evt', 'created_at')
    ) AS v (tbl, prefix, born)
    LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN public_id text', t.tbl);
        EXECUTE format('UPDATE %I SET public_id = public_id(%L, %I)', t.tbl, t.prefix, t.born);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN public_id SET DEFAULT public_id(%L), '
                       'ALTER COLUMN public_id SET NOT NULL', t.tbl, t.prefix);
        IF t.tbl <> 'events' THEN
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (tenant_id, public_id)',
                           t.tbl || '_public_id_idx', t.tbl);
        END IF;
    END LOOP;
END $$;

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
