-- Step 1 of 3 turning the webhook outbox into a table partitioned by day (0040), so that
-- `penguinmails maintain` can drop a day of delivered rows at once instead of deleting
-- them row by row. Each step is its own transaction, so no step holds a long exclusive
-- lock on a big outbox:
--   0038 bounds the existing rows' created_at below the start of the day after tomorrow
--        (UTC), NOT VALID: a brief lock, no scan; rows written meanwhile are checked;
--   0039 validates the bound, a scan that lets reads and writes go on;
--   0040 makes the existing table the partition of everything before that bound, which
--        the validated bound proves without another scan.
DO $$
DECLARE
    bound timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                         + interval '2 days';
BEGIN
    EXECUTE format(
        'ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_legacy_bound'
        ' CHECK (created_at < %L) NOT VALID', bound);
END $$;
