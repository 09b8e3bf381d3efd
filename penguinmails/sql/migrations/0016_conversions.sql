-- Sent apart from delivered.
--
-- `email.sent` now means "accepted and queued for delivery", recorded by the enqueue with the
-- message; `email.delivered` is the receiving server's 250, recorded by the MTA (it was
-- `email.sent` until now). Analytics reads both from the rollup (campaign_stats), which
-- counts by type and so needs no new column: the history below is renamed and filled in so
-- that old campaigns read the way new ones will.

-- What was recorded as `email.sent` was a 250: it is `email.delivered` now, in the events and
-- in the rollup alike (no 'email.delivered' row exists yet, so the keys cannot collide).
-- Deliveries of these events still waiting in the webhook outbox go out under the new name.
UPDATE events SET type = 'email.delivered' WHERE type = 'email.sent';
UPDATE campaign_stats SET type = 'email.delivered' WHERE type = 'email.sent';

-- Every message that was queued was "sent" in the new sense when it was queued, except those
-- the MTA found suppressed (which today's enqueue does not record as sent either). The rows
-- are dated when their message was queued, so the rollup (whose trigger runs here) buckets
-- them where they belong; webhooks are not fanned out for this history.
ALTER TABLE events DISABLE TRIGGER events_fan_out;
INSERT INTO events (tenant_id, message_id, campaign_id, type, created_at, public_id)
SELECT tenant_id, id, campaign_id, 'email.sent', created_at, public_id('evt', created_at)
FROM messages
WHERE status <> 'suppressed'
ORDER BY id;
ALTER TABLE events ENABLE TRIGGER events_fan_out;
