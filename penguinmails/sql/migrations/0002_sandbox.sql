-- What the built-in capture sink received: the sandbox inbox of `penguinmails up` and of
-- test-mode keys. Raw bytes exactly as they arrived, so what is shown is what was sent.
CREATE TABLE sandbox_messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mail_from   text NOT NULL,
    rcpt_tos    text[] NOT NULL,
    data        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
