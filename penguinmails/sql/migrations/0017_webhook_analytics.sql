-- What the webhook payloads need from the tracker: running open and click counts per message,
-- and for analytics.updated the numbers last announced per campaign.

-- Opens and clicks per message so far, machine hits included: an open's webhook says
-- "open_count": 3. The tracker's hit insert (record_hits) adds each batch with an UPSERT, whose
-- row lock serialises two tracker processes counting hits of the same message, so every hit
-- gets its exact running count (a count(*) over events could give two concurrent hits the
-- same number). The hit whose count is 1 is the message's first of its kind: for opens and
-- clicks this now decides `is_unique`, in place of engagement_firsts (which unsubscribes and
-- inbound's events still use), so the hot path pays one UPSERT per message, not two
-- statements' worth of probes. Existing hits are counted once here.
CREATE TABLE engagement_counts (
    message_id  bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    opens       bigint NOT NULL DEFAULT 0,
    clicks      bigint NOT NULL DEFAULT 0
);
INSERT INTO engagement_counts (message_id, opens, clicks)
SELECT message_id, count(*) FILTER (WHERE type = 'email.opened'),
       count(*) FILTER (WHERE type = 'email.clicked')
FROM events
WHERE message_id IS NOT NULL AND type IN ('email.opened', 'email.clicked')
GROUP BY message_id;

-- analytics.updated: per campaign, the numbers last announced and when. The tracker's loop
-- (emit_analytics_updated) claims a campaign by updating its row only where
-- `last_emitted_at < now() - interval '1 minute'` and the numbers differ, so with several
-- tracker processes exactly one announces each change, at most once a minute per campaign.
CREATE TABLE campaign_analytics_emitted (
    campaign_id      bigint PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    analytics        jsonb NOT NULL,
    last_emitted_at  timestamptz NOT NULL
);

-- The loop looks only at campaigns with rollup rows in the last hours: this index finds them
-- without reading every campaign's history. Rollup updates change no indexed column, so they
-- stay HOT; the index grows by one entry per (campaign, hour, type), as the table does.
CREATE INDEX campaign_stats_bucket_idx ON campaign_stats (bucket, campaign_id);
