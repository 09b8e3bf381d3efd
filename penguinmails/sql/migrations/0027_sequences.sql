-- Sequences: ordered steps sent to each enrolled contact, one step after another, until the
-- last step is sent or something stops the enrolment (a reply, a bounce, a complaint, an
-- unsubscribe, optionally an automatic reply or a click, or a person).
--
-- Each step's message is an ordinary messages row, created only once the step before it has
-- been accepted by the receiver (or at enrolment for step 1), with its due time (the previous
-- step's sent_at plus the step's delay) written into next_attempt_at: the MTA's claim does
-- the waiting, and a stop cancels a row that is still only queued. sequence_messages holds
-- one row per (enrolment, step): a second run of the scheduler cannot queue a step twice.

CREATE TABLE sequences (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id   text NOT NULL DEFAULT public_id('seq'),
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    from_email  text NOT NULL,
    from_name   text NOT NULL DEFAULT '',
    -- What stops an enrolment, as the names the API uses: reply, auto_reply, bounce,
    -- complaint, unsubscribe, click (bounce, complaint and unsubscribe are always there).
    stop_on     text[] NOT NULL,
    settings    jsonb NOT NULL DEFAULT '{}',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);
CREATE UNIQUE INDEX sequences_public_id_idx ON sequences (tenant_id, public_id);
-- `trigger_sequence(contact, 'welcome_series')` names a sequence: a name is one sequence.
CREATE UNIQUE INDEX sequences_name_idx ON sequences (tenant_id, name) WHERE status = 'active';

CREATE TABLE sequence_steps (
    sequence_id      bigint NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    position         integer NOT NULL CHECK (position >= 1),
    -- After the previous step was sent (step 1: after enrolment). Business days skip
    -- Saturdays and Sundays; hours may be fractional.
    delay_days       integer NOT NULL DEFAULT 0 CHECK (delay_days >= 0),
    business_days    boolean NOT NULL DEFAULT false,
    delay_hours      double precision NOT NULL DEFAULT 0 CHECK (delay_hours >= 0),
    -- NULL on a follow-up: "Re: " and the first step's subject, so it reads as a reply.
    subject          text,
    html_body        text,
    text_body        text,
    template_id      text,
    template_version integer,
    PRIMARY KEY (sequence_id, position)
);

CREATE TABLE sequence_enrollments (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id         text NOT NULL DEFAULT public_id('enr'),
    tenant_id         bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sequence_id       bigint NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    contact_id        bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'completed', 'stopped')),
    stop_reason       text,
    step              integer NOT NULL DEFAULT 0,  -- the last step queued; 0: none yet
    step_message_id   bigint REFERENCES messages (id) ON DELETE SET NULL,
    -- Step 1's Message-ID and subject: follow-ups answer it (In-Reply-To, References, Re:).
    thread_message_id text,
    thread_subject    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz
);
CREATE UNIQUE INDEX sequence_enrollments_public_id_idx
    ON sequence_enrollments (tenant_id, public_id);
-- One running enrolment per contact and sequence, whatever the API checked before: the
-- guard against two concurrent enrolments of the same contact.
CREATE UNIQUE INDEX sequence_enrollments_running_idx
    ON sequence_enrollments (sequence_id, contact_id) WHERE status = 'active';
CREATE INDEX sequence_enrollments_sequence_idx ON sequence_enrollments (sequence_id, id);
-- The scheduler reads only running enrolments.
CREATE INDEX sequence_enrollments_active_idx ON sequence_enrollments (id)
    WHERE status = 'active';

CREATE TABLE sequence_messages (
    enrollment_id bigint NOT NULL REFERENCES sequence_enrollments (id) ON DELETE CASCADE,
    step          integer NOT NULL,
    message_id    bigint NOT NULL UNIQUE REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (enrollment_id, step)
);

-- Stops a running enrolment and cancels its step message that is still waiting, each with
-- its `email.cancelled` event. A message already claimed ('sending') is in an SMTP
-- conversation and finishes it, as a cancelled campaign's does. The row lock comes first, in
-- a statement of its own: should the scheduler be queueing this enrolment's next step right
-- now, the cancelling statement starts after its commit and so sees (and cancels) that step.
CREATE FUNCTION sequence_stop(enrollment bigint, why text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM sequence_enrollments WHERE id = enrollment FOR UPDATE;
    WITH stopped AS (
        UPDATE sequence_enrollments
        SET status = 'stopped', stop_reason = why, ended_at = now(), updated_at = now()
        WHERE id = enrollment AND status = 'active'
        RETURNING id
    ), cancelled AS (
        UPDATE messages m SET status = 'cancelled', updated_at = now()
        FROM sequence_messages sm
        WHERE sm.enrollment_id IN (SELECT id FROM stopped)
          AND m.id = sm.message_id AND m.status IN ('queued', 'deferred')
        RETURNING m.id, m.tenant_id, m.campaign_id, m.recipient
    )
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
    SELECT tenant_id, id, campaign_id, 'email.cancelled',
           jsonb_build_object('recipient', recipient, 'reason', 'sequence stopped: ' || why)
    FROM cancelled;
END $$;

-- An enrolment deleted with its contact (or its sequence's tenant) takes its waiting step
-- with it: cancelled, with its event, so deleting a contact stops the mail to them (the
-- message rows themselves are history and stay).
CREATE FUNCTION sequence_enrollment_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH cancelled AS (
        UPDATE messages m SET status = 'cancelled', updated_at = now()
        FROM sequence_messages sm
        WHERE sm.enrollment_id = OLD.id
          AND m.id = sm.message_id AND m.status IN ('queued', 'deferred')
        RETURNING m.id, m.tenant_id, m.campaign_id, m.recipient
    )
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
    SELECT tenant_id, id, campaign_id, 'email.cancelled',
           jsonb_build_object('recipient', recipient, 'reason', 'sequence stopped: deleted')
    FROM cancelled;
    RETURN OLD;
END $$;

CREATE TRIGGER sequence_enrollments_deleted BEFORE DELETE ON sequence_enrollments
    FOR EACH ROW WHEN (OLD.status = 'active')
    EXECUTE FUNCTION sequence_enrollment_deleted();

-- Every writer of events (inbound's one-statement record, the tracker's hit batches, the
-- MTA's outcomes) goes through here, so an enrolment stops in the transaction that records
-- what stopped it: a reply committed a second before the next step's claim has already
-- cancelled it. The event of a sequence's message also names the sequence, the enrolment
-- and the step, for webhooks. Row-level and BEFORE (the data is changed before it is stored
-- and fanned out), and only for the event types that can stop an enrolment, so opens and
-- deliveries pay nothing but the WHEN test.
CREATE FUNCTION sequence_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
    why text;
BEGIN
    SELECT sm.step, e.id, e.public_id AS enrollment, e.status, q.public_id AS sequence,
           q.stop_on
    INTO s
    FROM sequence_messages sm
    JOIN sequence_enrollments e ON e.id = sm.enrollment_id
    JOIN sequences q ON q.id = e.sequence_id
    WHERE sm.message_id = NEW.message_id
    FOR UPDATE OF e;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    NEW.data := NEW.data || jsonb_build_object(
        'sequence_id', s.sequence, 'enrollment_id', s.enrollment, 'step', s.step);
    why := CASE NEW.type
        WHEN 'email.replied' THEN 'reply'
        WHEN 'email.auto_replied' THEN 'auto_reply'
        WHEN 'email.bounced' THEN 'bounce'
        WHEN 'email.complained' THEN 'complaint'
        WHEN 'email.unsubscribed' THEN 'unsubscribe'
        WHEN 'email.clicked' THEN 'click'
    END;
    IF s.status = 'active' AND why = ANY (s.stop_on) THEN
        PERFORM sequence_stop(s.id, why);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER events_sequence_stop BEFORE INSERT ON events
    FOR EACH ROW
    WHEN (NEW.message_id IS NOT NULL
          AND NEW.type IN ('email.replied', 'email.auto_replied', 'email.bounced',
                           'email.complained', 'email.unsubscribed', 'email.clicked'))
    EXECUTE FUNCTION sequence_event();

-- `days` business days after `at`: Saturdays and Sundays do not count, and a start on a
-- weekend counts from the Monday. Time of day is kept (in UTC; windows in the recipient's
-- zone are a later part).
CREATE FUNCTION add_business_days(at timestamptz, days integer) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result timestamptz := at;
    left_ integer := days;
BEGIN
    WHILE extract(isodow FROM result AT TIME ZONE 'UTC') > 5 LOOP
        result := result + interval '1 day';
    END LOOP;
    WHILE left_ > 0 LOOP
        result := result + interval '1 day';
        IF extract(isodow FROM result AT TIME ZONE 'UTC') <= 5 THEN
            left_ := left_ - 1;
        END IF;
    END LOOP;
    RETURN result;
END $$;
