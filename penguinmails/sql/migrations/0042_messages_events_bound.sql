-- Step 1 of 3 turning messages and events into partitioned tables (0044), so that
-- `penguinmails maintain` can drop a week of finished messages or of events at once instead
-- of deleting them row by row. The same three steps as the webhook outbox's (0038-0040),
-- each its own transaction, so none holds a long exclusive lock on a big table:
--   0042 adds messages.done_on, the week a finished message was archived in ('infinity'
--        while it is queued, in flight or not yet archived: a constant default, so no
--        rewrite), and bounds the existing rows with NOT VALID checks: a brief lock, no scan;
--   0043 validates them, scans that let reads and writes go on;
--   0044 makes the existing tables partitions (messages: the live partition, where every
--        queued and in-flight message is; events: everything before the bound), which the
--        validated checks prove without another scan.
ALTER TABLE messages ADD COLUMN done_on date NOT NULL DEFAULT 'infinity';
-- The live partition's bound: every existing row is live until `maintain` archives it.
ALTER TABLE messages ADD CONSTRAINT messages_live_bound CHECK (done_on = 'infinity') NOT VALID;
-- What the partitioned table will require of every row: only a finished message leaves the
-- live partition, so no partition retention can drop ever holds a queued or in-flight one.
ALTER TABLE messages ADD CONSTRAINT messages_done_check
    CHECK (done_on = 'infinity' OR status IN ('sent', 'bounced', 'failed', 'suppressed',
                                              'cancelled')) NOT VALID;

-- Events up to the Monday (UTC) at least two days away stay in the existing table; weekly
-- partitions start there.
DO $$
DECLARE
    bound timestamptz := (date_trunc('week', (now() AT TIME ZONE 'UTC') + interval '2 days')
                          + interval '7 days') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('ALTER TABLE events ADD CONSTRAINT events_legacy_bound'
                   ' CHECK (created_at < %L) NOT VALID', bound);
END $$;
