-- Shaping state every MTA process and host shares (mta/shared.py): message rates as one
-- budget per key rather than a bucket per process, the suspensions and temporary throttles
-- that automation rules set, and which site and provider each destination domain was last
-- seen to belong to (for `penguinmails status` and /metrics by site and provider).

-- A rate budget per shaping key (domain:..., site:..., provider:...). `tokens` may go below
-- zero: a reservation beyond what is saved up is a place in line, and its holder waits
-- -tokens / rate seconds. One short UPDATE per message at a rated level, nothing otherwise.
CREATE TABLE shaping_rates (
    key     text PRIMARY KEY,
    tokens  float8 NOT NULL,
    stamp   timestamptz NOT NULL
);

-- What an automation rule decided, until when. `key` is the scope it holds: site:...,
-- provider:..., tenant:<id> or campaign:<id>. A suspension stops every attempt in its scope;
-- a throttle lowers its rate and connections for the duration.
CREATE TABLE shaping_suspensions (
    key              text PRIMARY KEY,
    action           text NOT NULL CHECK (action IN ('suspend', 'throttle')),
    until            timestamptz NOT NULL,
    rule             text NOT NULL,
    reply            text NOT NULL,
    max_connections  integer,
    rate_per_second  float8,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shaping_suspensions_until_idx ON shaping_suspensions (until);

CREATE TABLE domain_sites (
    domain    text PRIMARY KEY,
    site      text NOT NULL,
    provider  text,
    seen_at   timestamptz NOT NULL DEFAULT now()
);

-- A warming source's deliveries per day and provider (or site), counted only while under the
-- day's cap (mta/sources.py). Warm sources write nothing here.
CREATE TABLE source_volume (
    source  text NOT NULL,
    bucket  text NOT NULL,
    day     date NOT NULL,
    sent    integer NOT NULL,
    PRIMARY KEY (source, bucket, day)
);
