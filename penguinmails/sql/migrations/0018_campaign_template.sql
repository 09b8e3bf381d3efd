-- A campaign made from a stored template keeps which one and which version: its content is
-- the template rendered at that moment (a later edit of the template does not change mail
-- already composed), and the API shows where it came from.
ALTER TABLE campaigns
    ADD COLUMN template_id text,
    ADD COLUMN template_version integer;
