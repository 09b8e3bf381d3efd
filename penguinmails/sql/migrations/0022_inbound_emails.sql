-- Replies and automatic replies to our messages, kept whole for the tenant: the API shows
-- them (GET /api/v1/inbound) and webhooks announce them (`email.received`). Until now a reply
-- was only an event with a snippet and the mail a sha256 in inbound_messages.
--
-- One row per inbound_messages row of a reply (the same mail delivered twice is one log row,
-- and so one row here: inbound_record writes both in one statement, behind the log row's
-- ON CONFLICT). tenant_id is the original message's, its mode row: a test-mode message's
-- replies are test-mode objects. Header values are decoded text; `raw` is the mail as it
-- arrived, for what the decoded fields leave out.
CREATE TABLE inbound_emails (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id           text NOT NULL DEFAULT public_id('inb'),
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    inbound_message_id  bigint NOT NULL UNIQUE REFERENCES inbound_messages (id) ON DELETE CASCADE,
    message_id          bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    auto                boolean NOT NULL,           -- an automatic reply, not a person's
    from_email          text NOT NULL,
    to_emails           text[] NOT NULL DEFAULT '{}',
    cc_emails           text[] NOT NULL DEFAULT '{}',
    subject             text NOT NULL,
    text_body           text,
    html_body           text,
    headers             jsonb NOT NULL DEFAULT '[]', -- [[name, value], ...] in order
    raw                 bytea NOT NULL,
    -- [{"index", "filename", "content_type", "size", "sha256" (hex)}], in MIME order; the
    -- bytes are in inbound_attachments under the same index.
    attachments         jsonb NOT NULL DEFAULT '[]',
    received_at         timestamptz NOT NULL DEFAULT now()
);
-- Lookups by id and pages newest first, per tenant; and a message's replies.
CREATE UNIQUE INDEX inbound_emails_public_id_idx ON inbound_emails (tenant_id, public_id);
CREATE INDEX inbound_emails_message_idx ON inbound_emails (message_id, public_id);
-- Mail is mostly text that compresses well; attachments below are usually compressed already.
ALTER TABLE inbound_emails ALTER COLUMN raw SET STORAGE EXTENDED;

-- The decoded bytes of each attachment, apart from the row so that listing and reading mail
-- never drags them along; fetched one at a time by a signed download link.
CREATE TABLE inbound_attachments (
    inbound_email_id    bigint NOT NULL REFERENCES inbound_emails (id) ON DELETE CASCADE,
    ordinal             integer NOT NULL CHECK (ordinal >= 0),  -- the metadata's "index"
    content             bytea NOT NULL,
    PRIMARY KEY (inbound_email_id, ordinal)
);
ALTER TABLE inbound_attachments ALTER COLUMN content SET STORAGE EXTERNAL;

-- A download link names the mail by public id alone (the signed token stands in for the
-- tenant and its key), so the lookup needs the id without the tenant.
CREATE INDEX inbound_emails_public_id_lookup_idx ON inbound_emails (public_id);
