-- name: account_subscription
-- The account's subscription, if it has had one: its Stripe customer for checkout and portal.
SELECT stripe_customer_id, stripe_subscription_id, plan, tier, status, current_period_end,
       cancel_at_period_end, ends_at
FROM subscriptions WHERE account_id = $1;

-- name: record_event
-- Replays refused: an event id handled once is never handled again. In the same transaction
-- as the event's effects, so an event that failed half-way is retried whole.
INSERT INTO stripe_events (event_id, type) VALUES ($1, $2)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;

-- name: live_account
-- The account a checkout's metadata names (its live row: tiers are the account's).
SELECT id FROM tenants WHERE id = $1 AND live_tenant_id IS NULL;

-- name: link_subscription
-- checkout.session.completed: the account now has this customer, subscription and plan.
INSERT INTO subscriptions (account_id, stripe_customer_id, stripe_subscription_id, plan, tier,
                           status, event_at)
VALUES ($1, $2, $3, $4, $5, 'active', $6)
ON CONFLICT (account_id) DO UPDATE
SET stripe_customer_id = EXCLUDED.stripe_customer_id,
    stripe_subscription_id = EXCLUDED.stripe_subscription_id,
    plan = EXCLUDED.plan, tier = EXCLUDED.tier, status = 'active',
    cancel_at_period_end = false, ends_at = NULL,
    event_at = greatest(subscriptions.event_at, EXCLUDED.event_at), updated_at = now();

-- name: subscription_by_stripe_id
SELECT account_id, plan, tier, event_at FROM subscriptions
WHERE stripe_subscription_id = $1 FOR UPDATE;

-- name: account_by_customer
SELECT account_id FROM subscriptions WHERE stripe_customer_id = $1;

-- name: update_subscription
-- customer.subscription.updated, when newer than what was last applied.
UPDATE subscriptions
SET plan = $2, tier = $3, status = $4, current_period_end = $5, cancel_at_period_end = $6,
    ends_at = $7, event_at = $8, updated_at = now()
WHERE stripe_subscription_id = $1 AND event_at <= $8;

-- name: insert_payment
INSERT INTO payments (account_id, stripe_invoice_id, stripe_subscription_id, amount_paid,
                      currency, paid_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (stripe_invoice_id) DO NOTHING;

-- name: expire_subscriptions
-- Subscriptions past their end: the account falls back to free, once (ends_at is cleared).
-- Run on every webhook and by the API's housekeeping, so a period end is applied within
-- minutes even when no event comes.
WITH due AS (
    UPDATE subscriptions SET ends_at = NULL, tier = 'free', updated_at = now()
    WHERE ends_at <= now()
    RETURNING account_id
)
UPDATE tenants SET tier = 'free'
WHERE id IN (SELECT account_id FROM due) OR live_tenant_id IN (SELECT account_id FROM due)
RETURNING id;

-- name: set_account_tier
-- As api's set_tier: the live row and its test twin alike.
UPDATE tenants SET tier = $2 WHERE id = $1 OR live_tenant_id = $1;
