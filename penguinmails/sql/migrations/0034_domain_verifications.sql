-- The last DNS verification of each sending domain (penguinmails/deliverability.py): one row
-- per domain, not per key, with the return-path and tracking names its checks looked at.
-- `sending_allowed` is what the API's door reads under [mta] require_verified_domains (DKIM
-- and DMARC passed); `checks` is the whole report, as `GET /api/v1/domains/{domain}` shows it.
-- The scheduler re-checks rows by checked_at; a row is made for every sending domain on its
-- first check, so a domain never verified is refused live sending like a failing one.
CREATE TABLE domain_verifications (
    domain             text PRIMARY KEY CHECK (domain = lower(domain)),
    tenant_id          bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    return_path_domain text NOT NULL,
    tracking_domain    text NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'pass', 'warn', 'fail')),
    sending_allowed    boolean NOT NULL DEFAULT false,
    -- The aligned names passed their checks: the composer then uses them for this domain's
    -- mail (VERP return path, tracking links), else the global bounce domain and base_url.
    return_path_verified boolean NOT NULL DEFAULT false,
    tracking_verified  boolean NOT NULL DEFAULT false,
    checks             jsonb NOT NULL DEFAULT '[]',
    checked_at         timestamptz NOT NULL DEFAULT '-infinity'
);
-- The scheduler's claim: the oldest results first.
CREATE INDEX domain_verifications_checked_idx ON domain_verifications (checked_at);
-- Inbound's RCPT check: is this a return-path domain of one of our sending domains?
CREATE INDEX domain_verifications_return_path_idx ON domain_verifications (return_path_domain);
