-- Stripe billing (api.billing). Stripe is the source of truth; these rows are the light local
-- reference its webhooks keep in step: the account's subscription, its payments, and the
-- events already handled (a replayed event changes nothing).

-- One subscription per account (its live tenant row). `ends_at`: when the tier falls back to
-- free (canceled, or cancelling at the period's end); NULL while it continues. `event_at`: the
-- Stripe time of the last event applied, so an older event arriving late changes nothing.
CREATE TABLE subscriptions (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id             bigint NOT NULL UNIQUE REFERENCES tenants (id) ON DELETE CASCADE,
    stripe_customer_id     text NOT NULL,
    stripe_subscription_id text UNIQUE,
    plan                   text NOT NULL,
    tier                   text NOT NULL,
    status                 text NOT NULL,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    ends_at                timestamptz,
    event_at               timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (stripe_customer_id);
CREATE INDEX subscriptions_ends_idx ON subscriptions (ends_at) WHERE ends_at IS NOT NULL;

CREATE TABLE payments (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id             bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    stripe_invoice_id      text NOT NULL UNIQUE,
    stripe_subscription_id text,
    amount_paid            bigint NOT NULL,  -- in the currency's smallest unit, as Stripe gives it
    currency               text NOT NULL,
    paid_at                timestamptz NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_account_idx ON payments (account_id, paid_at);

CREATE TABLE stripe_events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
