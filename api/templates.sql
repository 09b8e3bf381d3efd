-- The template store (api.templates). Every query is scoped by the caller's tenant row (the
-- row of its mode), so a template of another account or of the other mode cannot be named.
-- A template's content lives in template_versions; `templates.version` says which is current.

-- name: insert_template
-- One statement makes the template and its version 1, so no template exists without
-- content; an id already taken inserts nothing (no row back: the route answers 409), and
-- two concurrent creates of one id cannot both succeed.
WITH made AS (
    INSERT INTO templates (tenant_id, public_id, name, description)
    VALUES ($1, COALESCE($2::text, public_id('tpl')), $3, $4)
    ON CONFLICT (tenant_id, public_id) DO NOTHING
    RETURNING id, public_id, name, description, version, created_at, updated_at
), first AS (
    INSERT INTO template_versions (template_id, version, subject, html, text)
    SELECT id, 1, $5, $6, $7 FROM made
    RETURNING subject, html, text
)
SELECT m.public_id AS id, m.name, m.description, f.subject, f.html, f.text, m.version,
       m.created_at, m.updated_at
FROM made m CROSS JOIN first f;

-- name: get_template
-- The template with its current version's content: what a send that names it gets.
SELECT t.public_id AS id, t.name, t.description, v.subject, v.html, v.text, t.version,
       t.created_at, t.updated_at
FROM templates t
JOIN template_versions v ON v.template_id = t.id AND v.version = t.version
WHERE t.tenant_id = $1 AND t.public_id = $2;

-- name: list_templates
-- Keyset pagination, newest first, on (created_at, public_id): a total order (public_id is
-- unique per tenant) that the (tenant_id, created_at DESC, public_id DESC) index serves.
SELECT t.public_id AS id, t.name, t.description, v.subject, v.html, v.text, t.version,
       t.created_at, t.updated_at
FROM templates t
JOIN template_versions v ON v.template_id = t.id AND v.version = t.version
WHERE t.tenant_id = $1
  AND ($2::timestamptz IS NULL OR (t.created_at, t.public_id) < ($2::timestamptz, $3::text))
ORDER BY t.created_at DESC, t.public_id DESC
LIMIT $4;

-- name: lock_template
-- A change reads the current content under the template's row lock, so two concurrent
-- changes make versions n+1 and n+2 one after the other, never two versions n+1.
SELECT t.id, t.name, t.description, t.version, v.subject, v.html, v.text
FROM templates t
JOIN template_versions v ON v.template_id = t.id AND v.version = t.version
WHERE t.tenant_id = $1 AND t.public_id = $2
FOR UPDATE OF t;

-- name: insert_template_version
-- Versions are only ever added: a message sent from an earlier one stays explainable.
INSERT INTO template_versions (template_id, version, subject, html, text)
VALUES ($1, $2, $3, $4, $5);

-- name: update_template
-- Name, description and the current version, under the lock taken by lock_template.
UPDATE templates SET name = $2, description = $3, version = $4, updated_at = now()
WHERE id = $1;

-- name: delete_template
-- Its versions go with it (ON DELETE CASCADE); messages already queued carry their own copy
-- of the content, so nothing sent or queued changes.
DELETE FROM templates WHERE tenant_id = $1 AND public_id = $2 RETURNING public_id;

-- name: find_template
-- The key and current version of a template, to list its versions (404 when it is not the
-- caller's).
SELECT id, version FROM templates WHERE tenant_id = $1 AND public_id = $2;

-- name: list_template_versions
-- Newest first, keyset on the version number (the primary key's second column).
SELECT version, subject, html, text, created_at
FROM template_versions
WHERE template_id = $1 AND ($2::integer IS NULL OR version < $2)
ORDER BY version DESC
LIMIT $3;

-- name: get_template_version
SELECT v.version, v.subject, v.html, v.text, v.created_at
FROM templates t
JOIN template_versions v ON v.template_id = t.id
WHERE t.tenant_id = $1 AND t.public_id = $2 AND v.version = $3;
