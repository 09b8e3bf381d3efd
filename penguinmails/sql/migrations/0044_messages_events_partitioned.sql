-- Step 3 of 3 (see 0042): messages and events become partitioned tables, so retention drops a
-- week of them as a catalogue change (penguinmails/retention.py) instead of deleting rows.
-- Only metadata changes here: the existing tables are attached whole (their bounds proved by
-- 0043's validated checks, their indexes and foreign keys adopted as they are), so the brief
-- exclusive lock does not grow with them.
--
-- messages is partitioned by done_on. Its live partition (the existing table, renamed
-- messages_live) holds done_on = 'infinity': every queued, leased, deferred, paused and held
-- message, and finished ones until `maintain` archives them into the week it ran in. The
-- parent's messages_done_check keeps anything unfinished out of the weekly partitions, which
-- are what retention drops. events is partitioned by created_at: the existing table holds
-- everything before 0042's bound, one partition per week (Monday to Monday, UTC) after it.
--
-- A partitioned table's unique indexes must include its partition key, so the parents have
-- none; each partition keeps its own (the id, the Message-ID, the public id). Ids come from
-- one identity per parent, continued from the old table's, so unique per partition is unique.
-- For the same reason nothing can reference messages(id) or events(id) by foreign key any
-- more: those rows' lives are now governed by retention (which deletes a dropped week's
-- per-message rows with it), and readers join rather than assume the row is there.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT conrelid::regclass AS tab, conname FROM pg_constraint
              WHERE contype = 'f' AND conparentid = 0
                AND confrelid IN ('messages'::regclass, 'events'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tab, fk.conname);
    END LOOP;
END $$;

-- messages --------------------------------------------------------------------------------
ALTER TABLE messages RENAME TO messages_live;
DROP TRIGGER messages_notify_insert ON messages_live;
DROP TRIGGER messages_campaign_complete ON messages_live;
DROP TRIGGER messages_mode_check ON messages_live;
DROP TRIGGER messages_held ON messages_live;

CREATE TABLE messages (LIKE messages_live INCLUDING DEFAULTS INCLUDING IDENTITY)
    PARTITION BY RANGE (done_on);
ALTER TABLE messages
    ADD CONSTRAINT messages_status_check
        CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'bounced', 'failed',
                          'suppressed', 'cancelled', 'paused', 'held')),
    ADD CONSTRAINT messages_priority_check CHECK (priority IN (0, 1)),
    ADD CONSTRAINT messages_done_check
        CHECK (done_on = 'infinity' OR status IN ('sent', 'bounced', 'failed', 'suppressed',
                                                  'cancelled')),
    ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (tenant_id)
        REFERENCES tenants (id) ON DELETE CASCADE,
    ADD CONSTRAINT messages_identity_id_fkey FOREIGN KEY (identity_id)
        REFERENCES identities (id) ON DELETE SET NULL;

-- The old table's index definitions, so ATTACH adopts its indexes instead of building them.
-- The parents' indexes take a _pidx name: the partitions' own keep the names plans show.
CREATE INDEX messages_lease_pidx ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_tenant_pidx ON messages (tenant_id, id);
CREATE INDEX messages_campaign_pidx ON messages (campaign_id) WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_tags_pidx ON messages USING gin (tags);
CREATE INDEX messages_recipient_search_pidx ON messages (tenant_id, lower(recipient), public_id);
CREATE INDEX messages_status_search_pidx ON messages (tenant_id, status, public_id);
CREATE INDEX messages_campaign_search_pidx ON messages (campaign_id, public_id)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_fair_due_pidx ON messages (tenant_id, priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX messages_identity_due_pidx ON messages (identity_id, priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred') AND identity_id IS NOT NULL;
CREATE INDEX messages_campaign_open_pidx ON messages (campaign_id)
    WHERE campaign_id IS NOT NULL
      AND status IN ('queued', 'sending', 'deferred', 'paused', 'held');

ALTER TABLE messages ATTACH PARTITION messages_live FOR VALUES FROM ('infinity') TO (MAXVALUE);

-- The unique indexes the parent cannot have, on a partition of finished messages.
CREATE FUNCTION messages_unique_indexes(part text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', part || '_id_idx', part);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (message_id)', part || '_message_id_idx', part);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (tenant_id, public_id)',
                   part || '_public_id_idx', part);
END $$;

-- The week (Monday to Monday) of finished messages archived on `day`; false when it exists.
-- Used here and by `penguinmails maintain` (penguinmails/retention.py).
CREATE FUNCTION messages_add_week(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    monday date := date_trunc('week', day)::date;
    name text := 'messages_w' || to_char(monday, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF messages FOR VALUES FROM (%L) TO (%L)',
                   name, monday, monday + 7);
    PERFORM messages_unique_indexes(name);
    RETURN true;
END $$;

-- The rows kept per message outside messages, which retention deletes with their messages
-- (no foreign key cascades any more): the one list to extend when such a table is added.
CREATE FUNCTION forget_messages(ids bigint[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM engagement_counts WHERE message_id = ANY (ids);
    DELETE FROM engagement_firsts WHERE message_id = ANY (ids);
    DELETE FROM sequence_messages WHERE message_id = ANY (ids);
$$;

-- Where an archived message goes if `maintain` stopped creating weeks: never a failed update.
CREATE TABLE messages_done_default PARTITION OF messages DEFAULT;
SELECT messages_unique_indexes('messages_done_default');
SELECT messages_add_week(current_date + n) FROM generate_series(0, 7, 7) AS n;

DO $$
BEGIN
    EXECUTE format('ALTER TABLE messages ALTER COLUMN id RESTART WITH %s',
                   coalesce(pg_sequence_last_value(
                       pg_get_serial_sequence('messages_live', 'id')), 0) + 1);
END $$;

CREATE TRIGGER messages_notify_insert AFTER INSERT ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_notify();
CREATE TRIGGER messages_campaign_complete AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS changed_messages
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_complete();
CREATE TRIGGER messages_mode_check AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_mode_check();
CREATE TRIGGER messages_held BEFORE INSERT OR UPDATE OF status ON messages
    FOR EACH ROW WHEN (NEW.status IN ('queued', 'deferred'))
    EXECUTE FUNCTION messages_held();

-- The view bound the old table by its oid: bind it to the parent.
CREATE OR REPLACE VIEW identity_usage AS
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

-- events ----------------------------------------------------------------------------------
ALTER TABLE events RENAME TO events_legacy;
DROP TRIGGER events_campaign_stats ON events_legacy;
DROP TRIGGER events_fan_out ON events_legacy;
DROP TRIGGER events_sequence_stop ON events_legacy;
DROP TRIGGER events_sending_stats ON events_legacy;

CREATE TABLE events (LIKE events_legacy INCLUDING DEFAULTS INCLUDING IDENTITY)
    PARTITION BY RANGE (created_at);
ALTER TABLE events ADD CONSTRAINT events_tenant_id_fkey FOREIGN KEY (tenant_id)
    REFERENCES tenants (id) ON DELETE CASCADE;
CREATE INDEX events_message_pidx ON events (message_id);
CREATE INDEX events_tenant_pidx ON events (tenant_id, id);
CREATE INDEX events_campaign_engagement_pidx ON events (campaign_id, type)
    WHERE type IN ('email.opened', 'email.clicked', 'email.unsubscribed');
CREATE INDEX events_public_id_pidx ON events (tenant_id, public_id);
CREATE INDEX events_type_search_pidx ON events (tenant_id, (type COLLATE "C"), public_id);
CREATE INDEX events_campaign_search_pidx ON events (campaign_id, public_id)
    WHERE campaign_id IS NOT NULL;

-- A week (Monday to Monday, UTC) of events, with the unique index the parent cannot have;
-- false when it exists. One that would overlap the old table is refused, as any overlap.
CREATE FUNCTION events_add_week(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    monday date := date_trunc('week', day)::date;
    name text := 'events_w' || to_char(monday, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)', name,
                   monday::timestamp AT TIME ZONE 'UTC',
                   (monday + 7)::timestamp AT TIME ZONE 'UTC');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', name || '_id_idx', name);
    RETURN true;
END $$;

DO $$
DECLARE
    bound timestamptz := substring(
        pg_get_constraintdef((SELECT oid FROM pg_constraint
                              WHERE conname = 'events_legacy_bound')),
        '''([^'']+)''')::timestamptz;
BEGIN
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    EXECUTE format('ALTER TABLE events ALTER COLUMN id RESTART WITH %s',
                   coalesce(pg_sequence_last_value(
                       pg_get_serial_sequence('events_legacy', 'id')), 0) + 1);
    PERFORM events_add_week((bound AT TIME ZONE 'UTC')::date + n)
    FROM generate_series(0, 7, 7) AS n;
END $$;

-- Where an event goes if `maintain` stopped creating weeks: never a failed insert (which
-- would fail the MTA's outcome batch or the tracker's hit).
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE UNIQUE INDEX events_default_id_idx ON events_default (id);

CREATE TRIGGER events_campaign_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_rollup();
CREATE TRIGGER events_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_fan_out();
CREATE TRIGGER events_sending_stats AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION sending_stats_rollup();
CREATE TRIGGER events_sequence_stop BEFORE INSERT ON events
    FOR EACH ROW
    WHEN (NEW.message_id IS NOT NULL
          AND NEW.type IN ('email.replied', 'email.auto_replied', 'email.bounced',
                           'email.complained', 'email.unsubscribed', 'email.clicked'))
    EXECUTE FUNCTION sequence_event();
