-- Sending identities: a from address (with display name and signature) that a campaign or a
-- sequence sends through, with its own pace: daily and hourly caps over rolling windows, a
-- minimum (plus random) gap between its sends, a warm-up ramp, and optionally its own relay
-- (a mailbox provider's submission server with credentials) instead of our MTA's direct path.
-- Caps are enforced by the MTA's claim (claim_identity_batch), which locks an identity's row
-- while it counts and takes its messages, so they hold across every MTA process.

CREATE TABLE identities (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id          text NOT NULL DEFAULT public_id('idn'),
    tenant_id          bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email              text NOT NULL,
    name               text NOT NULL DEFAULT '',
    signature_html     text,
    signature_text     text,
    -- Its own relay: submission with AUTH (never in clear: STARTTLS or implicit TLS is
    -- required by the MTA). The password is sealed with the server key (AES-GCM, the
    -- identity's public id as associated data), never stored or logged in clear.
    relay_host         text,
    relay_port         integer CHECK (relay_port BETWEEN 1 AND 65535),
    relay_username     text,
    relay_password     bytea,
    -- NULL: no cap of that kind.
    daily_cap          integer CHECK (daily_cap >= 1),
    hourly_cap         integer CHECK (hourly_cap >= 1),
    min_gap_seconds    integer NOT NULL DEFAULT 0 CHECK (min_gap_seconds >= 0),
    random_gap_seconds integer NOT NULL DEFAULT 0 CHECK (random_gap_seconds >= 0),
    -- Warm-up: warmup_start a day on its first day, warmup_step more on each day after it
    -- that the identity was healthy (warmup_day counts those days), up to daily_cap.
    warmup_start       integer CHECK (warmup_start >= 1),
    warmup_step        integer NOT NULL DEFAULT 0 CHECK (warmup_step >= 0),
    warmup_day         integer NOT NULL DEFAULT 0,
    warmup_counted_on  date,
    status             text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'paused', 'archived')),
    paused_reason      text,
    paused_at          timestamptz,
    -- The earliest moment of its next send (the gap after the last one).
    next_send_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((relay_host IS NULL) = (relay_port IS NULL))
);
CREATE UNIQUE INDEX identities_public_id_idx ON identities (tenant_id, public_id);
CREATE UNIQUE INDEX identities_email_idx ON identities (tenant_id, lower(email))
    WHERE status <> 'archived';

-- One row per message an identity sent (taken by a claim), for its rolling caps: counting
-- the last day's rows of one identity is an index range of at most its daily cap.
CREATE TABLE identity_sends (
    identity_id bigint NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    message_id  bigint NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (identity_id, message_id)
);
CREATE INDEX identity_sends_window_idx ON identity_sends (identity_id, sent_at);

ALTER TABLE messages
    ADD COLUMN identity_id bigint REFERENCES identities (id) ON DELETE SET NULL,
    -- Why a queued message is waiting past its due time (an identity's cap or gap, a pause),
    -- shown by the API; cleared when it is claimed.
    ADD COLUMN held_reason text;
-- The identity claim's walk: the identities with queued messages (a loose index scan), then
-- each one's due messages in priority and due order. The fair claim leaves these rows alone.
CREATE INDEX messages_identity_due_idx ON messages (identity_id, priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred') AND identity_id IS NOT NULL;

-- A sequence's pool; an enrolment keeps the identity of its first step for every follow-up.
ALTER TABLE sequences ADD COLUMN identity_ids bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE sequence_enrollments
    ADD COLUMN identity_id bigint REFERENCES identities (id) ON DELETE SET NULL;
-- A campaign's pool, rotated over its recipients when it is sent.
ALTER TABLE campaigns ADD COLUMN identity_ids bigint[] NOT NULL DEFAULT '{}';

-- An identity's daily allowance today: its cap, or during warm-up the ramp's value (never
-- above the cap).
CREATE FUNCTION identity_daily_limit(i identities) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN i.warmup_start IS NULL THEN i.daily_cap
                ELSE least(coalesce(i.daily_cap, 2147483647),
                           i.warmup_start + i.warmup_step * i.warmup_day) END
$$;
