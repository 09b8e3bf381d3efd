-- The control API: keys and users, campaigns, contacts, rate-limit windows, idempotent sends,
-- the per-campaign analytics rollup, and campaign completion.

-- API keys are shown once and stored as a SHA-256 of the whole key: keys are 190 bits of
-- randomness, so a fast hash is as good as a slow one and costs nothing per request (argon2
-- is for passwords, which are guessable). `prefix` is the public part (sk_live_ + 12
-- characters), unique, and is how a request's key is found before the constant-time compare.
CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix      text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('sk', 'pk')),   -- pk: read-only
    mode        text NOT NULL CHECK (mode IN ('live', 'test')),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id);

-- People who log in with a password (argon2id, encoded with its parameters) for a JWT.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email         text NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- A campaign holds its content and, while a draft, its recipient list (jsonb: it is read
-- and written whole, at most 10,000 entries; larger audiences go through send-bulk).
-- `sending` covers scheduled too: the API shows `scheduled` while send_at is in the future.
CREATE TABLE campaigns (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL,
    subject         text NOT NULL,
    from_email      text,
    from_name       text NOT NULL DEFAULT '',
    html_body       text,
    text_body       text,
    headers         jsonb NOT NULL DEFAULT '{}',
    settings        jsonb NOT NULL DEFAULT '{}',
    recipients      jsonb NOT NULL DEFAULT '[]',
    recipient_count integer NOT NULL DEFAULT 0,   -- messages queued (all sends of it)
    status          text NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'sending', 'paused', 'completed', 'cancelled')),
    sandbox         boolean NOT NULL DEFAULT false,
    send_at         timestamptz,
    paused_at       timestamptz,
    started_at      timestamptz,
    completed_at    timestamptz,
    cancelled_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_tenant_idx ON campaigns (tenant_id, id);

CREATE TABLE contacts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (email = lower(email)),
    first_name    text,
    last_name     text,
    company       text,
    custom_fields jsonb NOT NULL DEFAULT '{}',
    tags          text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);
CREATE INDEX contacts_tenant_idx ON contacts (tenant_id, id);
-- The tag filter (`tags @> ARRAY[$tag]`) is a GIN probe, not a scan of the tenant's list.
CREATE INDEX contacts_tags_idx ON contacts USING gin (tags);

-- Fixed one-hour windows per tenant, shared by every API process: one UPSERT ... RETURNING
-- per request counts it and says where the tenant stands. Old windows are deleted by the API.
CREATE TABLE rate_limit_windows (
    tenant_id    bigint NOT NULL,
    window_start timestamptz NOT NULL,
    requests     integer NOT NULL,
    PRIMARY KEY (tenant_id, window_start)
);

-- Idempotency-Key: the first request with a key stores its response in the transaction that
-- queued the messages; a repeat with the same body gets that response, a different body 409.
CREATE TABLE idempotency_keys (
    tenant_id    bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    status_code  integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

-- Pausing a campaign moves its waiting messages to 'paused', which the MTA's claim never
-- reads; resume puts them back (shifting their due time by the pause) for the claim to find.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'bounced', 'failed',
                      'suppressed', 'cancelled', 'paused'));

-- "Is anything of this campaign still waiting?" is one probe of this partial index, however
-- many of its messages are final.
CREATE INDEX messages_campaign_open_idx ON messages (campaign_id)
    WHERE campaign_id IS NOT NULL AND status IN ('queued', 'sending', 'deferred', 'paused');

-- Analytics rollup: per campaign, hour and event type, the number of events, how many were
-- the first of their type for their message, and how many were not a machine's. Kept by a
-- statement-level trigger, so the API reads at most (hours x types) rows per campaign, however
-- many million messages it has, and the writers pay one grouped UPSERT per batch.
CREATE TABLE campaign_stats (
    campaign_id   bigint NOT NULL,
    bucket        timestamptz NOT NULL,
    type          text NOT NULL,
    total         bigint NOT NULL DEFAULT 0,
    uniq          bigint NOT NULL DEFAULT 0,
    human         bigint NOT NULL DEFAULT 0,
    human_unique  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, bucket, type)
);

-- Rows are grouped and sorted, so two concurrent batches take the rollup's row locks in the
-- same order and cannot deadlock each other.
CREATE FUNCTION campaign_stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_stats AS s (campaign_id, bucket, type, total, uniq, human, human_unique)
    SELECT campaign_id, date_trunc('hour', created_at, 'UTC'), type, count(*),
           count(*) FILTER (WHERE is_unique), count(*) FILTER (WHERE NOT is_machine),
           count(*) FILTER (WHERE is_unique AND NOT is_machine)
    FROM inserted_events
    WHERE campaign_id IS NOT NULL
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, bucket, type) DO UPDATE
    SET total = s.total + EXCLUDED.total,
        uniq = s.uniq + EXCLUDED.uniq,
        human = s.human + EXCLUDED.human,
        human_unique = s.human_unique + EXCLUDED.human_unique;
    RETURN NULL;
END $$;

CREATE TRIGGER events_campaign_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_rollup();

-- Completion: a sending campaign with nothing left waiting becomes 'completed' and records
-- `campaign.completed`, once. In the database rather than the API so it holds whoever finishes
-- the last message (the MTA, the inbound bounce handler) and whether or not an API process
-- runs. The campaign row is locked before the check: two transactions finishing the last two
-- messages at once are serialised, and the second one's check (a fresh snapshot: the function
-- is volatile) sees the first's commit. Returns whether it completed the campaign.
CREATE FUNCTION campaign_try_complete(cid bigint) RETURNS boolean LANGUAGE plpgsql AS $$
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
           jsonb_build_object('campaign_id', id, 'recipients', recipient_count)
    FROM campaigns WHERE id = cid;
    RETURN true;
END $$;

-- After any statement that made messages final. Statements that finish nothing (the MTA's
-- claims) cost a scan of their transition table and no more.
CREATE FUNCTION campaigns_complete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cid bigint;
BEGIN
    FOR cid IN
        SELECT DISTINCT campaign_id FROM changed_messages
        WHERE campaign_id IS NOT NULL
          AND status IN ('sent', 'bounced', 'failed', 'suppressed', 'cancelled')
        ORDER BY 1
    LOOP
        PERFORM campaign_try_complete(cid);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_campaign_complete AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS changed_messages
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_complete();
