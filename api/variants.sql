-- A/B variants of campaigns (api/variants.py, api/campaigns.py).

-- name: mark_variant
-- Done after enqueue_messages, in its transaction, so that query stays as it is: the rows
-- reach the MTA only with their variant, and a recipient held for the A/B test's winner
-- ($3) as 'held', which the MTA's claim never reads.
UPDATE messages
SET variant = $2, status = CASE WHEN $3::bool THEN 'held' ELSE status END
WHERE id = ANY ($1::bigint[]);

-- name: set_campaign_ab
-- A campaign's variants and A/B test, written beside insert_campaign and update_draft.
UPDATE campaigns SET variants = $2, ab_test = $3 WHERE id = $1;
