-- What the webhook payloads need from the tracker: running open and click counts per message.

-- Opens and clicks per message so far, machine hits included: an open's webhook says
-- "open_count": 3. The tracker's hit insert (record_hits) adds each batch with an UPSERT, whose
-- row lock serialises two tracker processes counting hits of the same message, so every hit
-- gets its exact running count (a count(*) over events could give two concurrent hits the
-- same number). Existing hits are counted once here.
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
