-- Step 2 of 3 (see 0038): the scan that proves every existing row is below the bound. It
-- takes SHARE UPDATE EXCLUSIVE, which lets the dispatcher's updates and the fan-out's
-- inserts go on meanwhile.
ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT webhook_deliveries_legacy_bound;
