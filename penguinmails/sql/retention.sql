-- name: try_lock
-- One maintenance run at a time across hosts (a cron job on two machines, say). Transaction
-- scoped, so it works behind a transaction pooler and is gone at commit whatever happens.
SELECT pg_try_advisory_xact_lock(hashtextextended('penguinmails:maintain', 0));

-- name: add_day
-- A day's partition of the webhook outbox (migration 0040's function); false if it exists.
SELECT webhook_deliveries_add_day($1::date);

-- name: default_rows
-- Rows that found no day's partition (maintain did not run for the days ahead): a warning.
SELECT count(*) FROM webhook_deliveries_default;

-- name: add_message_week
-- The week of finished messages archived on that day (migration 0044's function).
SELECT messages_add_week($1::date);

-- name: add_event_week
-- A week of events (migration 0044's function); false if it exists or the old table
-- covers it.
SELECT events_add_week($1::date);

-- name: kind_partitions
-- One parent's partitions with their bounds, from the catalogue: no scan of any partition.
SELECT c.relname AS name,
       pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
ORDER BY c.relname;

-- name: tenants
SELECT id, name FROM tenants;

-- name: archive_batch
-- Finished messages of one tenant leave the live partition for the week `maintain` runs in
-- (an UPDATE of the partition key moves the row). The tenant's status index finds them
-- without reading its queue; SKIP LOCKED passes over a row a bounce is updating right now.
WITH batch AS (
    SELECT id FROM messages
    WHERE tenant_id = $1 AND done_on = 'infinity'
      AND status IN ('sent', 'bounced', 'failed', 'suppressed', 'cancelled')
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m SET done_on = $3::date
FROM batch
WHERE m.id = batch.id AND m.done_on = 'infinity';


-- The statements below run on one partition, named by `maintain` from the catalogue (a name
-- it has checked against the partition names it makes): {part} is that name.

-- name: expire_tenant_messages
-- One batch of a tenant's messages in a week past its retention, with their per-message
-- tracking rows (forget_messages, migration 0044: nothing cascades from messages any more).
WITH gone AS (
    DELETE FROM {part}
    WHERE id IN (SELECT id FROM {part} WHERE tenant_id = $1 LIMIT $2)
    RETURNING id
), batch AS (
    SELECT count(*) AS n, array_agg(id) AS ids FROM gone
)
SELECT n FROM batch, forget_messages(batch.ids);

-- name: expire_message_rows
-- Before a week of messages is dropped: one batch of its messages' per-message tracking
-- rows, walking the week's ids ($1: the last id done; NULL back when none is left).
WITH batch AS (
    SELECT array_agg(id ORDER BY id) AS ids
    FROM (SELECT id FROM {part} WHERE id > $1 ORDER BY id LIMIT $2) b
)
SELECT ids[cardinality(ids)] FROM batch, forget_messages(batch.ids);

-- name: expire_tenant_events
-- One batch of a tenant's events in a week past its retention.
WITH gone AS (
    DELETE FROM {part}
    WHERE id IN (SELECT id FROM {part} WHERE tenant_id = $1 LIMIT $2)
    RETURNING id
)
SELECT count(*) FROM gone;
