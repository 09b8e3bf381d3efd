-- Inbound: what came back to the bounce domain (DSNs, complaint reports, replies, mailed
-- unsubscribes) and was matched to one of our messages.

-- One row per (message, dedupe key) that changed something: the log an operator reads to see
-- why a message's recipient was suppressed or a reply counted, and the idempotency guard.
-- The same DSN delivered twice (a remote MTA that lost our 250, a forwarding loop) hits the
-- unique key and records nothing the second time. The key is per kind for what happens once
-- per message ('bounce', 'delay', 'complaint', 'unsubscribe') and per inbound Message-ID for
-- replies, so two different replies both count and one reply sent twice counts once.
-- Unmatched and forged mail is not logged here (only in the process log): a stranger cannot
-- make this table grow.
CREATE TABLE inbound_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id          bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    classification      text NOT NULL
                        CHECK (classification IN ('hard_bounce', 'soft_bounce', 'delayed',
                                                  'complaint', 'reply', 'auto_reply',
                                                  'unsubscribe', 'ignored')),
    dedupe_key          text NOT NULL,
    reason              text NOT NULL,              -- why it was classified so, for people
    matched_by          text NOT NULL,              -- verp | return_path | message_id | ...
    mail_from           text NOT NULL,              -- the envelope sender ('' for a DSN)
    rcpt_to             text NOT NULL,
    header_message_id   text,                       -- the inbound mail's own Message-ID
    sha256              bytea NOT NULL,             -- of the raw message, to find it again
    detail              jsonb NOT NULL DEFAULT '{}',
    received_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, dedupe_key)
);
CREATE INDEX inbound_messages_tenant_idx ON inbound_messages (tenant_id, id);
