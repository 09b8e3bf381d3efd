-- Tenants, the message queue, its event log and the suppression list: what the MTA needs.

CREATE TABLE tenants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    tier        text NOT NULL DEFAULT 'free'
                CHECK (tier IN ('free', 'starter', 'professional', 'enterprise')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Addresses a tenant must never send to again. Emails are stored lower-cased so the
-- lookup in the claim is one index probe.
CREATE TABLE suppressions (
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email       text NOT NULL CHECK (email = lower(email)),
    reason      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, email)
);

-- The queue: one row per recipient message. Content is rendered at delivery time, so a
-- row stays small and a retry renders the same message again (same Message-ID).
CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    campaign_id         bigint,
    message_id          text NOT NULL UNIQUE,          -- RFC 5322 Message-ID, no brackets
    from_email          text NOT NULL,
    from_name           text NOT NULL DEFAULT '',
    recipient           text NOT NULL,
    recipient_domain    text NOT NULL,
    subject             text NOT NULL DEFAULT '',
    text_body           text,
    html_body           text,
    headers             jsonb NOT NULL DEFAULT '{}',
    personalization     jsonb NOT NULL DEFAULT '{}',
    settings            jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'bounced',
                                          'failed', 'suppressed', 'cancelled')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,
    lease_token         uuid,
    lease_expires_at    timestamptz,
    -- Set when a lease expired mid-send: the peer may have answered 250 before the crash,
    -- so the next attempt may deliver a second copy (with the same Message-ID).
    possible_duplicate  boolean NOT NULL DEFAULT false,
    last_reply_code     integer,
    last_reply          text,
    enhanced_status     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);

-- The claim reads only due rows; partial indexes keep it flat however many final rows pile up.
CREATE INDEX messages_due_idx ON messages (next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX messages_lease_idx ON messages (lease_expires_at)
    WHERE status = 'sending';
CREATE INDEX messages_tenant_idx ON messages (tenant_id, id);
CREATE INDEX messages_campaign_idx ON messages (campaign_id) WHERE campaign_id IS NOT NULL;

-- Append-only: every status transition, and later opens, clicks, bounces, replies.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id  bigint REFERENCES messages (id) ON DELETE CASCADE,
    campaign_id bigint,
    type        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_message_idx ON events (message_id);
CREATE INDEX events_tenant_idx ON events (tenant_id, id);

-- Wake idle MTA workers as soon as work arrives; once per statement, not per row, so a
-- bulk insert of 10,000 messages sends one notification.
CREATE FUNCTION messages_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('penguinmails_queue', '');
    RETURN NULL;
END $$;

CREATE TRIGGER messages_notify_insert AFTER INSERT ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_notify();
