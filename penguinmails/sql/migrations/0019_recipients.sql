-- Cc, Bcc and many recipients: each envelope recipient is still its own row (own status,
-- events, suppression check), and every row of one send carries the same visible To and Cc
-- lists, so each message shows who else got it. Bcc recipients appear in no header at all.
-- The lists are jsonb arrays of {email, name}; NULL (rows made before this, campaigns) means
-- "To: the row's recipient" as before.
ALTER TABLE messages
    ADD COLUMN to_header jsonb,
    ADD COLUMN cc_header jsonb,
    ADD COLUMN reply_to jsonb,
    -- The caller's own labels and data, shown in GET /messages/{id} and in every webhook of
    -- the message, so the receiver can route an event without a lookup of its own.
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

-- A campaign's tags and metadata, given to each message it queues.
ALTER TABLE campaigns
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

-- For the message search (tags @> ARRAY[...]) built on top of this.
CREATE INDEX messages_tags_idx ON messages USING gin (tags);
