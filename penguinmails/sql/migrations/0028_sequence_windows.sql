-- Sending windows: a sequence may send only on some days of the week and between two times
-- of day, in the recipient's time zone (the contact's custom_fields.timezone, an IANA name)
-- or else the sequence's own. The scheduler computes each step's due time into the window
-- when it queues the step, so nothing waits for the window to open but the MTA's claim.
ALTER TABLE sequences
    ADD COLUMN window_days  integer[],  -- ISO days of week, 1 Monday .. 7 Sunday; NULL: any
    ADD COLUMN window_start time,
    ADD COLUMN window_end   time,
    ADD COLUMN window_zone  text NOT NULL DEFAULT 'UTC',
    ADD COLUMN window_skip  date[] NOT NULL DEFAULT '{}',  -- no sending on these local dates
    ADD CONSTRAINT sequences_window_check CHECK (
        window_days IS NULL
        OR (cardinality(window_days) > 0 AND window_start < window_end));

-- The first moment from `at` inside the window. A moment already inside it is kept; one
-- outside moves to a later window, at its opening plus `spread` (0 to 1, the caller's
-- random()) of its length, so the steps held overnight do not all leave at its opening.
-- Dates in `skip` (holidays, local dates) have no window.
-- A zone Postgres does not know (a contact's typo) falls back to `fallback`, the sequence's
-- zone: one bad contact must not fail its whole batch. Daylight saving is the zone's: the
-- window is wall-clock time in it.
CREATE FUNCTION next_in_window(at timestamptz, zone text, fallback text, days integer[],
                               opens time, closes time, skip date[], spread double precision)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    local timestamp;
    day date;
BEGIN
    IF days IS NULL THEN
        RETURN at;
    END IF;
    zone := coalesce(nullif(zone, ''), fallback);
    BEGIN
        local := at AT TIME ZONE zone;
    EXCEPTION WHEN invalid_parameter_value THEN
        zone := fallback;
        local := at AT TIME ZONE zone;
    END;
    FOR i IN 0..7 + cardinality(skip) LOOP
        day := local::date + i;
        IF extract(isodow FROM day)::integer = ANY (days) AND NOT day = ANY (skip) THEN
            IF i = 0 AND local::time >= opens AND local::time < closes THEN
                RETURN at;
            END IF;
            IF i > 0 OR local::time < opens THEN
                RETURN (day + opens + spread * (closes - opens)) AT TIME ZONE zone;
            END IF;
        END IF;
    END LOOP;
    RETURN at;  -- not reached: each skipped date only pushes the search one day further
END $$;
