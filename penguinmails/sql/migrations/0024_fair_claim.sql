-- Fair claims and priority classes. The claim used to take due messages in due-time order
-- alone, so one tenant's million-message campaign went out before another tenant's password
-- reset queued a second later. Now each claim shares its batch between the tenants (tenant
-- rows: a test mode is its own) with due messages, round robin, and inside that takes
-- transactional messages (priority 0: single sends and batches) before bulk (1: campaigns,
-- sequences, send-bulk).
ALTER TABLE messages ADD COLUMN priority smallint NOT NULL DEFAULT 1
    CHECK (priority IN (0, 1));

-- Serves both halves of the claim: the walk over the tenants with queued messages (a loose
-- index scan on its first column) and each tenant's due messages in priority and due order.
-- It replaces messages_due_idx, which only the claim read.
CREATE INDEX messages_fair_due_idx ON messages (tenant_id, priority, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
DROP INDEX messages_due_idx;
