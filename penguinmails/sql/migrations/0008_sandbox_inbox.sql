-- The sandbox inbox: each captured message is tied to the queue message it delivers and to
-- that message's tenant, so the API shows a tenant its own captures and nobody else's.
-- Both are NULL for mail that did not come from our MTA (no signed VERP return path), which
-- no tenant sees. message_id has no foreign key on purpose: the capture is a record of what
-- was sent, and stays readable after `queue purge` removes the queue row.
ALTER TABLE sandbox_messages
    ADD COLUMN tenant_id  bigint REFERENCES tenants (id) ON DELETE CASCADE,
    ADD COLUMN message_id bigint;

-- The inbox list: one tenant's captures, newest first, by keyset (id < cursor).
CREATE INDEX sandbox_messages_tenant_idx ON sandbox_messages (tenant_id, id DESC);
