-- Tracking flags on events, webhook endpoints, and the webhook outbox with its fan-out trigger.

-- Opens and clicks are classified when they are recorded, so analytics can count human
-- engagement apart from raw hits without re-deriving it: `is_machine` marks proxy and scanner
-- fetches (the reason is in data.machine_reason), `is_unique` the first hit of its type for a
-- message. Both stay false for every other event type.
ALTER TABLE events
    ADD COLUMN is_unique  boolean NOT NULL DEFAULT false,
    ADD COLUMN is_machine boolean NOT NULL DEFAULT false;

-- Analytics read engagement per campaign; the partial index keeps that off the send events.
CREATE INDEX events_campaign_engagement_idx ON events (campaign_id, type)
    WHERE type IN ('email.opened', 'email.clicked', 'email.unsubscribed');

-- The first open, click and unsubscribe of each message. A primary-key insert with
-- ON CONFLICT DO NOTHING decides "first" race-free across tracker processes, which a
-- NOT EXISTS over events could not (two concurrent batches would both see nothing).
CREATE TABLE engagement_firsts (
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, type)
);

-- A tenant's webhook endpoints. The secret is needed to sign, so it cannot be hashed: it is
-- sealed with AES-GCM under a key derived from the server keys (penguinmails.webhooks).
-- During a rotation the previous secret also signs until `previous_secret_expires_at`.
-- `events` lists the subscribed event types; empty or '*' means all, 'email.*' a prefix.
CREATE TABLE webhooks (
    id                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id                   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                         text NOT NULL,
    description                 text NOT NULL DEFAULT '',
    events                      text[] NOT NULL DEFAULT '{}',
    secret_sealed               bytea NOT NULL,
    previous_secret_sealed      bytea,
    previous_secret_expires_at  timestamptz,
    active                      boolean NOT NULL DEFAULT true,
    -- Start of the current run of failed attempts; cleared by any success. An endpoint
    -- failing for too long is disabled (active = false) with the reason kept here.
    failing_since               timestamptz,
    disabled_at                 timestamptz,
    disabled_reason             text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

-- The fan-out trigger probes this on every event insert: it must stay one index lookup.
CREATE INDEX webhooks_tenant_active_idx ON webhooks (tenant_id) WHERE active;
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id, id);

-- The outbox: one row per (endpoint, event), written in the transaction that writes the
-- event, so an event is never recorded without its deliveries nor delivered without being
-- recorded. The row id is the stable `webhook-id` a receiver dedupes on.
CREATE TABLE webhook_deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id          bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id            bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    tenant_id           bigint NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivering', 'delivered', 'failed',
                                          'cancelled')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,
    lease_token         uuid,
    lease_expires_at    timestamptz,
    last_status_code    integer,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz,
    UNIQUE (webhook_id, event_id)
);

-- The dispatcher claims per endpoint (so one endpoint's backlog cannot fill every slot):
-- for each active endpoint, its oldest due pending rows. Partial, so delivered rows piling
-- up cost the claim nothing.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending';
-- Leases of a dispatcher that died are found through this one.
CREATE INDEX webhook_deliveries_lease_idx ON webhook_deliveries (lease_expires_at)
    WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

-- Fan-out: every event inserted by anyone (the MTA's outcome batch, the tracker's hit batch,
-- the API, inbound) becomes one delivery per active endpoint of its tenant subscribed to its
-- type, in the same statement and so the same transaction. Statement-level with a transition
-- table, so a batch of 500 events costs one join rather than 500 trigger calls; and one
-- NOTIFY wakes idle dispatchers only when there is something to send.
CREATE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fanned integer;
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, event_id, tenant_id)
    SELECT w.id, e.id, e.tenant_id
    FROM inserted_events e
    JOIN webhooks w ON w.tenant_id = e.tenant_id AND w.active
    WHERE cardinality(w.events) = 0
       OR EXISTS (SELECT 1 FROM unnest(w.events) AS p(pattern)
                  WHERE p.pattern = '*' OR p.pattern = e.type
                     OR (right(p.pattern, 2) = '.*'
                         AND starts_with(e.type, left(p.pattern, -1))));
    GET DIAGNOSTICS fanned = ROW_COUNT;
    IF fanned > 0 THEN
        PERFORM pg_notify('penguinmails_webhooks', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_fan_out();
