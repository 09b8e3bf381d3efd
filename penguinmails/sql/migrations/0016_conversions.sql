-- Sent apart from delivered, and conversions.
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
