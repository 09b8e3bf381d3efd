-- A message accepted by the receiver (email.sent) can bounce later (a DSN through inbound).
-- Counting both would report it delivered and bounced at once, so the rollup also counts
-- such bounces under 'email.bounced.after_delivery', which analytics subtracts from delivered.
CREATE OR REPLACE FUNCTION campaign_stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_stats AS s (campaign_id, bucket, type, total, uniq, human, human_unique)
    SELECT campaign_id, bucket, type, count(*),
           count(*) FILTER (WHERE is_unique), count(*) FILTER (WHERE NOT is_machine),
           count(*) FILTER (WHERE is_unique AND NOT is_machine)
    FROM (
        SELECT campaign_id, date_trunc('hour', created_at, 'UTC') AS bucket, type, is_unique,
               is_machine
        FROM inserted_events WHERE campaign_id IS NOT NULL
        UNION ALL
        SELECT campaign_id, date_trunc('hour', created_at, 'UTC'),
               'email.bounced.after_delivery', is_unique, is_machine
        FROM inserted_events
        WHERE campaign_id IS NOT NULL AND type = 'email.bounced'
          AND (data ->> 'after_delivery')::boolean
    ) rows
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, bucket, type) DO UPDATE
    SET total = s.total + EXCLUDED.total,
        uniq = s.uniq + EXCLUDED.uniq,
        human = s.human + EXCLUDED.human,
        human_unique = s.human_unique + EXCLUDED.human_unique;
    RETURN NULL;
END $$;
