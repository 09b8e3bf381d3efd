-- Per-destination-domain connection caps that hold across every MTA process on the database:
-- a process must hold a slot row to open a connection. A slot held by a process that died
-- expires (the lease heartbeat keeps live ones fresh), so a crash cannot lose capacity for good.
CREATE TABLE mta_connection_slots (
    domain      text NOT NULL,
    slot        integer NOT NULL,
    owner       text,
    expires_at  timestamptz,
    PRIMARY KEY (domain, slot)
);
CREATE INDEX mta_connection_slots_owner_idx ON mta_connection_slots (owner)
    WHERE owner IS NOT NULL;
