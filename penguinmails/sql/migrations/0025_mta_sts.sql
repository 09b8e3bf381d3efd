-- Receivers' MTA-STS policies (RFC 8461), kept for their max_age so that every MTA process,
-- and the MTA after a restart, holds a domain to its policy even while an attacker blocks the
-- TXT lookup or the policy fetch (mta/mtasts.py). One row per destination domain, replaced
-- only by a policy fetched successfully.
CREATE TABLE mta_sts_policies (
    domain      text PRIMARY KEY CHECK (domain = lower(domain)),
    policy_id   text NOT NULL,
    mode        text NOT NULL CHECK (mode IN ('enforce', 'testing', 'none')),
    mx          text[] NOT NULL,
    max_age     integer NOT NULL CHECK (max_age >= 0),
    fetched_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
