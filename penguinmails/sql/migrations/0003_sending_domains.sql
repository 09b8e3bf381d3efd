-- The domains tenants send from and their DKIM keys. One row per key: a domain signed with
-- both RSA and Ed25519 has a row for each (they need separate selectors, since a selector's
-- DNS record names one key type), and a rotated key is a new row under a new selector, so
-- the old record can stay published while mail signed with it is still in flight.
CREATE TABLE sending_domains (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    domain      text NOT NULL CHECK (domain = lower(domain)),
    selector    text NOT NULL,
    algorithm   text NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    -- AES-256-GCM under a key derived from the server keys ("at-rest"): version byte, nonce,
    -- ciphertext. The domain, selector and algorithm are bound in as associated data, so a
    -- key cannot be moved to another row and still decrypt.
    private_key bytea NOT NULL,
    public_key  text NOT NULL,   -- the p= value published in DNS
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain, selector)
);
-- The composer's lookup is by domain; the unique index above serves it (domain leads).
CREATE INDEX sending_domains_tenant_idx ON sending_domains (tenant_id);
