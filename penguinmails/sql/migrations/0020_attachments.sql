-- Attachment bytes, stored once per tenant and content: a send to many recipients (one
-- message row each) and the same file sent again later share one row instead of copying
-- the bytes per message. A message row lists the attachments it carries (with the name,
-- type and disposition of this send, which the same bytes may not share elsewhere) in
-- messages.attachments.
CREATE TABLE attachments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    size        integer NOT NULL CHECK (size >= 0),
    content     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, sha256)
);
-- Already compressed formats (images, PDFs, zips) are the common case: compressing them
-- again costs CPU on every write and read for nothing.
ALTER TABLE attachments ALTER COLUMN content SET STORAGE EXTERNAL;

-- [{"id": attachments.id, "filename", "content_type", "disposition", "content_id"}], in the
-- order given; NULL for a message without attachments (nearly all of them).
ALTER TABLE messages ADD COLUMN attachments jsonb;

-- Executables (by extension or the MZ signature) are refused unless the account turns this
-- on: they are the classic malware carrier and most receivers reject them anyway.
ALTER TABLE tenants ADD COLUMN allow_executable_attachments boolean NOT NULL DEFAULT false;
