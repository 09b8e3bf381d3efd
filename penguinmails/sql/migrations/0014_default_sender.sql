-- The sender a message gets when its request names none, per tenant row (so per mode: a test
-- key's default never changes what live mail says). NULL: fall back to noreply@ the first
-- sending domain (or, in test mode with no domain, the sandbox's address).
ALTER TABLE tenants
    ADD COLUMN default_from_email text,
    ADD COLUMN default_from_name text NOT NULL DEFAULT '';
