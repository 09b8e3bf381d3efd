-- A/B variants: a campaign's content, and each sequence step's, may come in variants (a
-- subject, html, text, each falling back to the base content), chosen per recipient by
-- weight when its message is created; the message records which (messages.variant), so
-- results can be counted per variant from the messages and their events.
--
-- Optionally a winner takes the rest (ab_test: by reply, click or open rate, once every
-- variant has a minimum sample of messages that were delivered at least wait_hours ago).
-- A campaign sends a test fraction first; its other recipients are committed as messages in
-- the 'held' status, which the MTA's claim never reads (it takes only queued and deferred),
-- and are released with the winner's content when the decision is made. A sequence step's
-- messages created after the decision carry the winner. The decision is recorded where the
-- variants are (ab_winner: which, when, on what numbers) with an `ab_test.decided` event.

ALTER TABLE messages ADD COLUMN variant text;

ALTER TABLE campaigns
    -- [{name, weight, subject?, html?, text?, template_id?, template_version?}], resolved
    -- (a template's content copied in, as the base content's is).
    ADD COLUMN variants  jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN ab_test   jsonb,  -- {winner_by, min_sample, wait_hours, test_fraction}
    ADD COLUMN ab_winner jsonb;  -- {variant, decided_at, winner_by, variants: [...numbers]}

ALTER TABLE sequences ADD COLUMN ab_test jsonb;  -- applies to each step with variants
ALTER TABLE sequence_steps
    ADD COLUMN variants  jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN ab_winner jsonb;

-- 'held': a campaign's recipient waiting for its A/B test's winner. Not waiting for the MTA
-- (its claim reads queued and deferred only), but not final either: the campaign is not
-- completed while one is held, and cancelling the campaign cancels it.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'bounced', 'failed',
                      'suppressed', 'cancelled', 'paused', 'held'));

DROP INDEX messages_campaign_open_idx;
CREATE INDEX messages_campaign_open_idx ON messages (campaign_id)
    WHERE campaign_id IS NOT NULL
      AND status IN ('queued', 'sending', 'deferred', 'paused', 'held');

CREATE OR REPLACE FUNCTION campaign_try_complete(cid bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM campaigns WHERE id = cid AND status = 'sending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM messages
               WHERE campaign_id = cid
                 AND status IN ('queued', 'sending', 'deferred', 'paused', 'held'))
    THEN
        RETURN false;
    END IF;
    UPDATE campaigns SET status = 'completed', completed_at = now(), updated_at = now()
    WHERE id = cid;
    INSERT INTO events (tenant_id, campaign_id, type, data)
    SELECT tenant_id, id, 'campaign.completed',
           jsonb_build_object('name', name, 'status', 'completed',
                              'recipient_count', recipient_count)
    FROM campaigns WHERE id = cid;
    RETURN true;
END $$;

-- One variant of `variants` by weight: `r` (0 to 1, the caller's random()) falls in one
-- variant's share of the summed weights. NULL when there are no variants (the base content).
CREATE FUNCTION pick_variant(variants jsonb, r double precision) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT w.v FROM (
        SELECT a.v, a.o,
               sum((a.v ->> 'weight')::float8) OVER (ORDER BY a.o) AS upto,
               sum((a.v ->> 'weight')::float8) OVER () AS total
        FROM jsonb_array_elements(variants) WITH ORDINALITY AS a(v, o)
    ) w
    WHERE r * w.total < w.upto
    ORDER BY w.o
    LIMIT 1
$$;

-- The variant a step's next message gets: the decided winner, else one by weight.
CREATE FUNCTION step_variant(variants jsonb, winner jsonb, r double precision) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(
        (SELECT v FROM jsonb_array_elements(variants) v
         WHERE winner IS NOT NULL AND v ->> 'name' = winner ->> 'variant'),
        pick_variant(variants, r))
$$;
