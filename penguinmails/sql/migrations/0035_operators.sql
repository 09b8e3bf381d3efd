-- Operators: users who may see the whole installation's queue in the dashboard (depth by
-- destination, deferrals, webhook backlog, what is paused, across every tenant). Only
-- `penguinmails operators grant` sets it, so it takes shell access to the send hosts, which
-- the threat model's operator already has; no API route can grant it.
ALTER TABLE users ADD COLUMN operator boolean NOT NULL DEFAULT false;
