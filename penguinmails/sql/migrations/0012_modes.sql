-- Test and live mode as two worlds, as Stripe has them. Every tenant (the account a customer
-- has) gets a twin row in test mode, and every tenant-owned row (keys, users, campaigns,
-- contacts, messages, events, webhooks, suppressions, idempotency keys, captures, inbound
-- records) points at the row of its mode. Isolation then holds by construction: each query
-- already scopes by tenant_id, so a test key or test-mode token cannot name a live row, and a
-- forgotten `AND livemode` filter cannot exist. What belongs to the account itself (its name,
-- plan tier and sending domains) stays on the live row; `live_tenant_id` leads back to it.

ALTER TABLE tenants
    ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test')),
    ADD COLUMN live_tenant_id bigint REFERENCES tenants (id) ON DELETE CASCADE,
    ADD CONSTRAINT tenants_mode_pair CHECK ((mode = 'live') = (live_tenant_id IS NULL));
ALTER TABLE tenants DROP CONSTRAINT tenants_name_key;
ALTER TABLE tenants ADD CONSTRAINT tenants_name_mode_key UNIQUE (name, mode);
-- One test twin per account, found from the live row by this index.
CREATE UNIQUE INDEX tenants_test_twin_idx ON tenants (live_tenant_id)
    WHERE live_tenant_id IS NOT NULL;

INSERT INTO tenants (name, tier, mode, live_tenant_id)
SELECT name, tier, 'test', id FROM tenants WHERE mode = 'live';

-- What was test mode before now moves to the twin: test keys, sandbox messages and campaigns,
-- and whatever hangs off those messages.
UPDATE api_keys k SET tenant_id = t.id
FROM tenants t WHERE t.live_tenant_id = k.tenant_id AND k.mode = 'test';
UPDATE campaigns c SET tenant_id = t.id
FROM tenants t WHERE t.live_tenant_id = c.tenant_id AND c.sandbox;
UPDATE messages m SET tenant_id = t.id
FROM tenants t WHERE t.live_tenant_id = m.tenant_id AND m.sandbox;
UPDATE events e SET tenant_id = m.tenant_id
FROM messages m WHERE m.id = e.message_id AND m.sandbox AND e.tenant_id <> m.tenant_id;
UPDATE events e SET tenant_id = c.tenant_id
FROM campaigns c
WHERE e.message_id IS NULL AND c.id = e.campaign_id AND c.sandbox AND e.tenant_id <> c.tenant_id;
UPDATE inbound_messages i SET tenant_id = m.tenant_id
FROM messages m WHERE m.id = i.message_id AND i.tenant_id <> m.tenant_id;
UPDATE sandbox_messages s SET tenant_id = m.tenant_id
FROM messages m WHERE m.id = s.message_id AND s.tenant_id <> m.tenant_id;

-- A test-mode message is a sandbox message, whoever inserts it and however: checked once per
-- statement over its new rows (a 10,000-recipient bulk insert pays one join, not 10,000
-- lookups), so no code path can queue test-mode mail for a real MX host.
CREATE FUNCTION messages_mode_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1
               FROM (SELECT DISTINCT tenant_id FROM new_messages WHERE NOT sandbox) n
               JOIN tenants t ON t.id = n.tenant_id
               WHERE t.mode = 'test') THEN
        RAISE EXCEPTION 'a test-mode message must be a sandbox message'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_mode_check AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_mode_check();

-- A user's address is unique within its tenant and mode, not across the platform: a 409 must
-- not tell one customer that another has a user, nor let it squat the address.
-- `token_version` is copied into each login token; bumping it (logout everywhere, a new
-- password) makes every token issued before stop at its next request.
ALTER TABLE users DROP CONSTRAINT users_email_key;
ALTER TABLE users ADD CONSTRAINT users_tenant_email_key UNIQUE (tenant_id, email);
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;
-- Login finds candidate accounts by address.
CREATE INDEX users_email_idx ON users (email);

-- Publishable keys count in a bucket of their own, so a browser key (public by design)
-- cannot spend the budget of the tenant's secret keys.
ALTER TABLE rate_limit_windows ADD COLUMN bucket text NOT NULL DEFAULT 'secret';
ALTER TABLE rate_limit_windows DROP CONSTRAINT rate_limit_windows_pkey;
ALTER TABLE rate_limit_windows ADD PRIMARY KEY (tenant_id, bucket, window_start);

-- Failed logins per account address and per source network, in fixed windows shared by every
-- API process: past the limit a login is refused before any password is hashed.
CREATE TABLE login_failures (
    scope        text NOT NULL,          -- 'account:<email>' or 'network:<cidr>'
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL,
    PRIMARY KEY (scope, window_start)
);
