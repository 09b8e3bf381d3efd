-- Step 2 of 3 (see 0042): the scans that prove every existing row within its bound. They
-- take SHARE UPDATE EXCLUSIVE, which lets the MTA's claims and outcomes, the API's inserts
-- and the tracker's events go on meanwhile.
ALTER TABLE messages VALIDATE CONSTRAINT messages_live_bound;
ALTER TABLE messages VALIDATE CONSTRAINT messages_done_check;
ALTER TABLE events VALIDATE CONSTRAINT events_legacy_bound;
