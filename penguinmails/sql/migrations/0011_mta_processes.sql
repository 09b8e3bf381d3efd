-- Live MTA processes, so each can take a fair share of a domain's connection cap (the slot
-- rows of 0009 keep the cap exact; the share keeps one process from holding every slot
-- while another sits on claimed messages it cannot send).
CREATE TABLE mta_processes (
    owner    text PRIMARY KEY,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
