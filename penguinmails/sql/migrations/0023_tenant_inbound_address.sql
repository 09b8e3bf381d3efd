-- A tenant's own inbound address: `in-<token>@<bounce domain>`, one per mode row (mail to a
-- test-mode address is a test-mode object, as a test-mode message's replies are). Mail sent
-- there that answers none of the tenant's messages is still the tenant's: it is kept whole
-- (inbound_emails with no message) and announced as `email.received`, as inbound parse
-- services do. The token is random and unguessable rather than signed: the tenant can rotate
-- it (POST /api/v1/settings/inbound/rotate), after which mail to the old address is dropped.
ALTER TABLE tenants ADD COLUMN inbound_token text;
UPDATE tenants SET inbound_token = substr(md5(gen_random_uuid()::text), 1, 20);
ALTER TABLE tenants ALTER COLUMN inbound_token SET NOT NULL,
    ALTER COLUMN inbound_token SET DEFAULT substr(md5(gen_random_uuid()::text), 1, 20);
-- The inbound server's lookup of a recipient, one probe.
CREATE UNIQUE INDEX tenants_inbound_token_idx ON tenants (inbound_token);

-- Mail to the address that answers nothing of ours belongs to no message.
ALTER TABLE inbound_messages ALTER COLUMN message_id DROP NOT NULL;
ALTER TABLE inbound_messages DROP CONSTRAINT inbound_messages_classification_check;
ALTER TABLE inbound_messages ADD CONSTRAINT inbound_messages_classification_check
    CHECK (classification IN ('hard_bounce', 'soft_bounce', 'delayed', 'complaint', 'reply',
                              'auto_reply', 'unsubscribe', 'ignored', 'inbound'));
-- The same mail delivered twice to the address is one row, as (message_id, dedupe_key) makes
-- it for mail about a message.
CREATE UNIQUE INDEX inbound_messages_tenant_mail_idx ON inbound_messages (tenant_id, dedupe_key)
    WHERE message_id IS NULL;
ALTER TABLE inbound_emails ALTER COLUMN message_id DROP NOT NULL;
