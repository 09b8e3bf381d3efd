-- The template store: content a send or campaign names by `content.template_id` instead of
-- carrying it. A template belongs to one mode's tenant row, like every tenant-owned object,
-- so a test key cannot name a live template. Its id is the caller's choice
-- (`welcome_template`, as the product documentation writes it) or a generated `tpl_...`,
-- unique per tenant row: two accounts, or one account's two modes, may each have their own
-- `welcome_template`.
CREATE TABLE templates (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    public_id   text NOT NULL DEFAULT public_id('tpl')
                CHECK (public_id ~ '^[a-z0-9_-]{1,64}$'),
    name        text NOT NULL,
    description text,
    -- The version a send uses now: the highest in template_versions.
    version     integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, public_id)
);
-- The listing pages newest first by (created_at, public_id): caller-chosen ids do not sort
-- by creation as generated ones do, and the integer key never leaves the database.
CREATE INDEX templates_tenant_created_idx ON templates (tenant_id, created_at DESC, public_id DESC);

-- Every version's content, kept whole, so a message sent from version 3 can be traced to
-- exactly what it said after the template moved on. A version is never changed; a change
-- to the template's content inserts the next one.
CREATE TABLE template_versions (
    template_id bigint NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    subject     text,
    html        text,
    text        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version),
    CHECK (html IS NOT NULL OR text IS NOT NULL)
);
