-- Holidays by country in sending windows, and sending windows for campaigns.
--
-- A window may name a country (ISO 3166-1, optionally with a subdivision: "US", "US-CA"):
-- its public holidays, computed by the `holidays` library (penguinmails/windows.py), are
-- kept in window_holiday_dates up to window_holidays_until (three calendar years from when
-- they were computed; the scheduler's tick computes them again a year before they run out),
-- and skipped like window_skip's dates (next_in_window, migration 0028).
--
-- A campaign gets the same window as a sequence: its messages' due times are moved into it
-- when they are queued (in the recipient's zone: the contact's custom_fields.timezone, or
-- the recipient's personalization.timezone, else the window's), so nothing polls.

ALTER TABLE sequences
    ADD COLUMN window_holidays       text,
    ADD COLUMN window_holiday_dates  date[] NOT NULL DEFAULT '{}',
    ADD COLUMN window_holidays_until date;

ALTER TABLE campaigns
    ADD COLUMN window_days           integer[],  -- ISO days of week; NULL: no window
    ADD COLUMN window_start          time,
    ADD COLUMN window_end            time,
    ADD COLUMN window_zone           text NOT NULL DEFAULT 'UTC',
    ADD COLUMN window_skip           date[] NOT NULL DEFAULT '{}',
    ADD COLUMN window_holidays       text,
    ADD COLUMN window_holiday_dates  date[] NOT NULL DEFAULT '{}',
    ADD COLUMN window_holidays_until date,
    ADD CONSTRAINT campaigns_window_check CHECK (
        window_days IS NULL
        OR (cardinality(window_days) > 0 AND window_start < window_end));
