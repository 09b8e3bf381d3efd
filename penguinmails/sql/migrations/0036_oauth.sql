-- OAuth 2.0 for third-party apps (api.oauth, with Authlib's grant logic).
--
-- A client is registered by a tenant (its owner manages it); any user who logs in on the
-- consent page may authorize it, and what they grant acts in that user's tenant row (so in
-- that user's mode) only. Secrets, codes and tokens are stored as SHA-256 digests: each is
-- 190+ bits of randomness, so a fast hash is as good as a slow one.
CREATE TABLE oauth_clients (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id     text NOT NULL DEFAULT public_id('client'),
    tenant_id     bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    redirect_uris text[] NOT NULL CHECK (cardinality(redirect_uris) BETWEEN 1 AND 10),
    -- public clients (a browser or mobile app) hold no secret and must use PKCE
    secret_hash   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
-- client_id is the public id, global: the authorize URL names no tenant.
CREATE UNIQUE INDEX oauth_clients_public_id_key ON oauth_clients (public_id);
CREATE INDEX oauth_clients_tenant_idx ON oauth_clients (tenant_id, public_id);

-- A grant (one user's consent to one client) is a row of api_keys of kind 'oauth': it shows
-- in the key list with its client and scope, and revoking it there ends its tokens. Its
-- prefix and secret_hash are never a usable key (parse_key accepts only sk_ and pk_).
ALTER TABLE api_keys DROP CONSTRAINT api_keys_kind_check;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_kind_check CHECK (kind IN ('sk', 'pk', 'oauth')),
    ADD COLUMN oauth_client_id bigint REFERENCES oauth_clients (id) ON DELETE CASCADE,
    -- deleting the user who consented ends what they granted
    ADD COLUMN oauth_user_id bigint REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN scope text,
    ADD CONSTRAINT api_keys_oauth_check
        CHECK ((kind = 'oauth') = (oauth_client_id IS NOT NULL AND oauth_user_id IS NOT NULL
                                   AND scope IS NOT NULL));

-- Codes live ten minutes and are claimed once (used_at); a second use finds used_at set and
-- revokes the grant the first use made (RFC 6749 4.1.2).
CREATE TABLE oauth_codes (
    code_hash             bytea PRIMARY KEY,
    client_id             bigint NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id               bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redirect_uri          text NOT NULL,
    scope                 text NOT NULL,
    code_challenge        text,
    code_challenge_method text,
    expires_at            timestamptz NOT NULL,
    used_at               timestamptz,
    grant_id              bigint REFERENCES api_keys (id) ON DELETE CASCADE
);
CREATE INDEX oauth_codes_expiry_idx ON oauth_codes (expires_at);

-- One access token and its refresh token. A refresh rotates: the row is revoked and a new
-- one issued; presenting a revoked refresh token again revokes the whole grant.
CREATE TABLE oauth_tokens (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grant_id           bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    access_hash        bytea NOT NULL UNIQUE,
    refresh_hash       bytea UNIQUE,
    scope              text NOT NULL,
    issued_at          timestamptz NOT NULL DEFAULT now(),
    access_expires_at  timestamptz NOT NULL,
    refresh_expires_at timestamptz,
    revoked_at         timestamptz
);
CREATE INDEX oauth_tokens_grant_idx ON oauth_tokens (grant_id);
