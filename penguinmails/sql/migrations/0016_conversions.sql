-- Sent apart from delivered, opens and clicks by device and country, and conversions.
--
-- `email.sent` now means "accepted and queued for delivery", recorded by the enqueue with the
-- message; `email.delivered` is the receiving server's 250, recorded by the MTA (it was
-- `email.sent` until now). Analytics reads both from the rollup (campaign_stats), which
-- counts by type and so needs no new column: the history below is renamed and filled in so
-- that old campaigns read the way new ones will.

-- What was recorded as `email.sent` was a 250: it is `email.delivered` now, in the events and
-- in the rollup alike (no 'email.delivered' row exists yet, so the keys cannot collide).
-- Deliveries of these events still waiting in the webhook outbox go out under the new name.
UPDATE events SET type = 'email.delivered' WHERE type = 'email.sent';
UPDATE campaign_stats SET type = 'email.delivered' WHERE type = 'email.sent';

-- Every message that was queued was "sent" in the new sense when it was queued, except those
-- the MTA found suppressed (which today's enqueue does not record as sent either). The rows
-- are dated when their message was queued, so the rollup (whose trigger runs here) buckets
-- them where they belong; webhooks are not fanned out for this history.
ALTER TABLE events DISABLE TRIGGER events_fan_out;
INSERT INTO events (tenant_id, message_id, campaign_id, type, created_at, public_id)
SELECT tenant_id, id, campaign_id, 'email.sent', created_at, public_id('evt', created_at)
FROM messages
WHERE status <> 'suppressed'
ORDER BY id;
ALTER TABLE events ENABLE TRIGGER events_fan_out;

-- Opens and clicks by the device and the country the tracker finds for each hit (event data
-- `device_type`, and `country_code` or else `country`; 'unknown' when it has neither, as
-- every hit recorded before the tracker looked), per campaign, hour and event type, with the
-- same counters as campaign_stats. Values are bounded, so a strange header cannot grow a row.
CREATE FUNCTION event_dimensions(data jsonb)
RETURNS TABLE (dimension text, value text) LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    VALUES ('device', left(coalesce(nullif(data ->> 'device_type', ''), 'unknown'), 32)),
           ('country', left(coalesce(upper(nullif(data ->> 'country_code', '')),
                                     nullif(data ->> 'country', ''), 'unknown'), 64))
$$;

CREATE TABLE campaign_dimension_stats (
    campaign_id   bigint NOT NULL,
    bucket        timestamptz NOT NULL,
    type          text NOT NULL,
    dimension     text NOT NULL CHECK (dimension IN ('device', 'country')),
    value         text NOT NULL,
    total         bigint NOT NULL DEFAULT 0,
    uniq          bigint NOT NULL DEFAULT 0,
    human         bigint NOT NULL DEFAULT 0,
    human_unique  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, bucket, type, dimension, value)
);

INSERT INTO campaign_dimension_stats (campaign_id, bucket, type, dimension, value, total, uniq,
                                      human, human_unique)
SELECT e.campaign_id, date_trunc('hour', e.created_at, 'UTC'), e.type, d.dimension, d.value,
       count(*), count(*) FILTER (WHERE e.is_unique), count(*) FILTER (WHERE NOT e.is_machine),
       count(*) FILTER (WHERE e.is_unique AND NOT e.is_machine)
FROM events e CROSS JOIN LATERAL event_dimensions(e.data) d
WHERE e.campaign_id IS NOT NULL AND e.type IN ('email.opened', 'email.clicked')
GROUP BY 1, 2, 3, 4, 5;

-- The rollup of 0010 (bounces after delivery counted apart, so analytics can take them off
-- `email.delivered`), now also keeping the device and country rollup, in the same trigger
-- call. Both inserts are grouped and sorted, so concurrent batches take the rollups' row
-- locks in one order and cannot deadlock.
CREATE OR REPLACE FUNCTION campaign_stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_stats AS s (campaign_id, bucket, type, total, uniq, human, human_unique)
    SELECT campaign_id, bucket, type, count(*),
           count(*) FILTER (WHERE is_unique), count(*) FILTER (WHERE NOT is_machine),
           count(*) FILTER (WHERE is_unique AND NOT is_machine)
    FROM (
        SELECT campaign_id, date_trunc('hour', created_at, 'UTC') AS bucket, type, is_unique,
               is_machine
        FROM inserted_events WHERE campaign_id IS NOT NULL
        UNION ALL
        SELECT campaign_id, date_trunc('hour', created_at, 'UTC'),
               'email.bounced.after_delivery', is_unique, is_machine
        FROM inserted_events
        WHERE campaign_id IS NOT NULL AND type = 'email.bounced'
          AND (data ->> 'after_delivery')::boolean
    ) rows
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, bucket, type) DO UPDATE
    SET total = s.total + EXCLUDED.total,
        uniq = s.uniq + EXCLUDED.uniq,
        human = s.human + EXCLUDED.human,
        human_unique = s.human_unique + EXCLUDED.human_unique;

    INSERT INTO campaign_dimension_stats AS s (campaign_id, bucket, type, dimension, value,
                                               total, uniq, human, human_unique)
    SELECT e.campaign_id, date_trunc('hour', e.created_at, 'UTC'), e.type, d.dimension, d.value,
           count(*), count(*) FILTER (WHERE e.is_unique), count(*) FILTER (WHERE NOT e.is_machine),
           count(*) FILTER (WHERE e.is_unique AND NOT e.is_machine)
    FROM inserted_events e CROSS JOIN LATERAL event_dimensions(e.data) d
    WHERE e.campaign_id IS NOT NULL AND e.type IN ('email.opened', 'email.clicked')
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (campaign_id, bucket, type, dimension, value) DO UPDATE
    SET total = s.total + EXCLUDED.total,
        uniq = s.uniq + EXCLUDED.uniq,
        human = s.human + EXCLUDED.human,
        human_unique = s.human_unique + EXCLUDED.human_unique;
    RETURN NULL;
END $$;

-- Conversions: a goal reached after a message, reported through the API with a secret key
-- (naming the message) or by the landing page of a tracked click with the click's token
-- (penguinmails.conversions). A conversion belongs to its message's tenant row, so a test-mode
-- message's conversions are test-mode objects. `value` is kept as given (exact decimal) and
-- in minor units of its currency (cents; yen) for sums; both are NULL when no value was given,
-- and so is the currency. `token_hash` is the SHA-256 of what a token says, never the token:
-- its unique index makes a token good for one conversion, race-free across API processes.
CREATE TABLE conversions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id    text NOT NULL DEFAULT public_id('conv'),
    tenant_id    bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id   bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    campaign_id  bigint,
    goal         text NOT NULL CHECK (length(goal) BETWEEN 1 AND 100),
    value        numeric CHECK (value >= 0),
    value_minor  bigint CHECK (value_minor >= 0),
    currency     text CHECK (currency ~ '^[A-Z]{3}$'),
    source       text NOT NULL CHECK (source IN ('api', 'click')),
    link_index   integer,
    clicked_at   timestamptz,
    token_hash   bytea UNIQUE,
    metadata     jsonb NOT NULL DEFAULT '{}',
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((value IS NULL) = (value_minor IS NULL) AND (value IS NULL) = (currency IS NULL)),
    CHECK ((source = 'click') = (token_hash IS NOT NULL))
);
CREATE UNIQUE INDEX conversions_public_id_idx ON conversions (public_id);
-- The list, newest first, keyset-paginated on the public id (time-ordered).
CREATE INDEX conversions_tenant_idx ON conversions (tenant_id, public_id);
-- A campaign's conversions: its revenue in analytics, and the list filtered by campaign.
CREATE INDEX conversions_campaign_idx ON conversions (campaign_id, public_id)
    WHERE campaign_id IS NOT NULL;
-- Deleting messages (a tenant's, by cascade) finds their conversions by this one.
CREATE INDEX conversions_message_idx ON conversions (message_id);
