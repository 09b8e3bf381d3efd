-- Stripe billing (api.billing), then the shop and CRM connectors (api.connectors).
--
-- Stripe billing. Stripe is the source of truth; these rows are the light local
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

-- Shop and CRM connectors: a tenant's Shopify, HubSpot or Salesforce account posting its
-- webhooks to /api/v1/connectors/{id}/webhook. The platform's signing secret (Shopify's app
-- secret, HubSpot's client secret, the shared secret in a Salesforce outbound message's
-- URL) is sealed with the server keys (penguinmails.secrets), never stored in the clear.
-- What a new contact gets: a sequence to enrol in and/or a template to send, and extra tags.
CREATE TABLE connectors (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id     text NOT NULL DEFAULT public_id('conn'),
    tenant_id     bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    platform      text NOT NULL CHECK (platform IN ('shopify', 'hubspot', 'salesforce')),
    secret_sealed bytea NOT NULL,
    sequence      text,
    template_id   text,
    tags          text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- The webhook URL names the connector alone: its id is found without a tenant.
CREATE UNIQUE INDEX connectors_public_id_key ON connectors (public_id);
CREATE INDEX connectors_tenant_idx ON connectors (tenant_id, public_id);

-- Replays refused: each platform delivery id (X-Shopify-Webhook-Id, HubSpot's eventId,
-- a Salesforce notification Id) is handled once per connector, in the transaction of its
-- effects (a delivery that failed is retried whole).
CREATE TABLE connector_deliveries (
    connector_id bigint NOT NULL REFERENCES connectors (id) ON DELETE CASCADE,
    delivery_id  text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, delivery_id)
);
CREATE INDEX connector_deliveries_age_idx ON connector_deliveries (received_at);
