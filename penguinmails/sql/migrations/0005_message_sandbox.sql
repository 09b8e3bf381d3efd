-- Messages sent with a test-mode API key run the whole pipeline but are delivered to the
-- capture sink, never to real MX hosts.
ALTER TABLE messages ADD COLUMN sandbox boolean NOT NULL DEFAULT false;
