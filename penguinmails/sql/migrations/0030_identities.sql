-- Sending identities: a from address (with display name and signature) that a campaign or a
-- sequence sends through, with its own pace: daily and hourly caps over rolling windows, a
-- minimum (plus random) gap between its sends, a warm-up ramp, and optionally its own relay
-- (a mailbox provider's submission server with credentials) instead of our MTA's direct path.
-- Caps are enforced by the MTA's claim (claim_batch, its identity part), which locks an
-- identity's row while it counts and takes its messages, so they hold across every MTA
-- process.

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

-- A campaign's or a sequence's pool is `settings.identities` (public ids, in order); an
-- enrolment keeps the identity of its first step for every follow-up.
ALTER TABLE sequence_enrollments
    ADD COLUMN identity_id bigint REFERENCES identities (id) ON DELETE SET NULL;

-- A message's html with an identity's signature before its last </body> (or at its end).
CREATE FUNCTION with_signature(html text, signature text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN html IS NULL OR signature IS NULL THEN html
                WHEN strpos(reverse(lower(html)), '>ydob/<') = 0 THEN html || signature
                ELSE left(html, length(html) - strpos(reverse(lower(html)), '>ydob/<') - 6)
                     || signature
                     || right(html, strpos(reverse(lower(html)), '>ydob/<') + 6) END
$$;

-- A text part with an identity's signature under the usual delimiter ("-- ", RFC 3676).
CREATE FUNCTION with_text_signature(text_body text, signature text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN text_body IS NULL OR signature IS NULL THEN text_body
                ELSE text_body || E'\n\n-- \n' || signature END
$$;

-- An identity's daily allowance today: its cap, or during warm-up the ramp's value (never
-- above the cap).
CREATE FUNCTION identity_daily_limit(i identities) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN i.warmup_start IS NULL THEN i.daily_cap
                ELSE least(coalesce(i.daily_cap, 2147483647),
                           i.warmup_start + i.warmup_step * i.warmup_day) END
$$;

-- An identity as the API shows it: with what its caps have used (its sends over the last day
-- and hour, an index range of at most its daily cap) and its messages waiting on it. Its
-- i.* is expanded when it is made: a migration adding a column to identities recreates it.
CREATE VIEW identity_usage AS
SELECT i.*,
       identity_daily_limit(i) AS daily_limit,
       (SELECT count(*) FROM identity_sends s
        WHERE s.identity_id = i.id AND s.sent_at > now() - interval '1 day') AS sent_last_day,
       (SELECT count(*) FROM identity_sends s
        WHERE s.identity_id = i.id AND s.sent_at > now() - interval '1 hour') AS sent_last_hour,
       (SELECT count(*) FROM messages m
        WHERE m.identity_id = i.id AND m.status IN ('queued', 'deferred')
          AND m.held_reason IS NOT NULL) AS held
FROM identities i;
