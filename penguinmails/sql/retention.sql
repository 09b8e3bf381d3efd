-- name: try_lock
-- One maintenance run at a time across hosts (a cron job on two machines, say). Transaction
-- scoped, so it works behind a transaction pooler and is gone at commit whatever happens.
SELECT pg_try_advisory_xact_lock(hashtextextended('penguinmails:maintain', 0));

-- name: add_day
-- A day's partition of the webhook outbox (migration 0040's function); false if it exists.
SELECT webhook_deliveries_add_day($1::date);

-- name: partitions
-- The outbox's partitions with their upper bound (NULL: the default partition), from the
-- catalogue: no scan of any partition.
SELECT c.relname AS name,
       pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'webhook_deliveries'::regclass
ORDER BY c.relname;

-- name: default_rows
-- Rows that found no day's partition (maintain did not run for the days ahead): a warning.
SELECT count(*) FROM webhook_deliveries_default;
