-- Step 3 of 3 (see 0038): the webhook outbox becomes a table partitioned by day of
-- created_at. The existing table is attached whole as the partition of everything before
-- 0038's bound (proved by the constraint 0039 validated, so no scan), its indexes and
-- foreign keys attached as they are (no build); new rows go to one partition per day from
-- the bound on, created ahead by this migration and then by `penguinmails maintain`, which
-- also drops the days past retention. Only metadata changes here: the brief exclusive lock
-- does not grow with the outbox.
--
-- A partitioned table's unique indexes must include the partition key, so the parent has
-- none; each partition keeps its own (id, the (webhook, event) pair, the public id). Every
-- delivery of an event is written by the statement that writes the event (the fan-out
-- trigger), so with the same created_at, in the same partition: unique per partition is
-- unique. Ids still come from one identity, continued from the old table's.
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_legacy;
ALTER INDEX webhook_deliveries_due_idx RENAME TO webhook_deliveries_legacy_due_idx;
ALTER INDEX webhook_deliveries_lease_idx RENAME TO webhook_deliveries_legacy_lease_idx;
ALTER INDEX webhook_deliveries_event_idx RENAME TO webhook_deliveries_legacy_event_idx;

CREATE TABLE webhook_deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    webhook_id          bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id            bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    tenant_id           bigint NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CONSTRAINT webhook_deliveries_status_check
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
    public_id           text NOT NULL DEFAULT public_id('whd')
) PARTITION BY RANGE (created_at);

-- The same definitions as the old table's, so ATTACH adopts its indexes instead of building.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_lease_idx ON webhook_deliveries (lease_expires_at)
    WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

-- A partition for one UTC day, with the unique indexes the parent cannot have; false when
-- it exists already. Used here and by `penguinmails maintain` (penguinmails/retention.py).
CREATE FUNCTION webhook_deliveries_add_day(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := 'webhook_deliveries_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF webhook_deliveries FOR VALUES FROM (%L) TO (%L)',
                   name, low, low + interval '1 day');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (id)', name || '_id_idx', name);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (webhook_id, event_id)',
                   name || '_pair_idx', name);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (tenant_id, public_id)',
                   name || '_public_id_idx', name);
    RETURN true;
END $$;

DO $$
DECLARE
    bound timestamptz := substring(
        pg_get_constraintdef((SELECT oid FROM pg_constraint
                              WHERE conname = 'webhook_deliveries_legacy_bound')),
        '''([^'']+)''')::timestamptz;
    last_id bigint := pg_sequence_last_value(
        pg_get_serial_sequence('webhook_deliveries_legacy', 'id'));
    day date;
BEGIN
    EXECUTE format('ALTER TABLE webhook_deliveries ATTACH PARTITION webhook_deliveries_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    EXECUTE format('ALTER TABLE webhook_deliveries ALTER COLUMN id RESTART WITH %s',
                   coalesce(last_id, 0) + 1);
    FOR day IN SELECT generate_series((bound AT TIME ZONE 'UTC')::date,
                                      (bound AT TIME ZONE 'UTC')::date + 13, '1 day')::date
    LOOP
        PERFORM webhook_deliveries_add_day(day);
    END LOOP;
END $$;

-- Where a row would go if `maintain` stopped creating days: never a failed insert (which
-- would fail the event that fanned out to it, and so the MTA's outcome batch). `maintain`
-- warns while it holds rows; a day it holds rows of cannot be created until they are gone.
CREATE TABLE webhook_deliveries_default PARTITION OF webhook_deliveries DEFAULT;
CREATE UNIQUE INDEX webhook_deliveries_default_id_idx ON webhook_deliveries_default (id);
CREATE UNIQUE INDEX webhook_deliveries_default_pair_idx
    ON webhook_deliveries_default (webhook_id, event_id);
CREATE UNIQUE INDEX webhook_deliveries_default_public_id_idx
    ON webhook_deliveries_default (tenant_id, public_id);
