"""Stripe billing: Checkout for a plan, the customer portal, and the webhook that keeps the
account's tier in step (`[billing]` in the config).

Stripe is the source of truth; `subscriptions`, `payments` and the account's tier are its
light local reference, written only from signed webhook events:

- `checkout.session.completed`: links the Stripe customer and subscription to the account
  named by the session's metadata (`tenant_id`, `plan_id`, set by our checkout) and moves the
  account to the plan's tier at once (the rate limit follows at the next request: tiers are
  read on every request).
- `invoice.paid`: records the payment.
- `customer.subscription.updated`: plan changes apply at once; `canceled` (or
  `cancel_at_period_end`) sets `ends_at` to the period's end, when the account falls back to
  free (`expire`, run on each webhook and by the API's housekeeping).

The webhook verifies `Stripe-Signature` with the library (HMAC-SHA256 over the timestamp and
body, with a tolerance on the timestamp); an event id is handled once, in the same
transaction as its effects. Billing is the live account's: test keys are refused.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe
from pydantic import Field
from stripe._base_address import BaseAddresses

from api.errors import ApiError, forbidden, not_found, unauthorized, validation_error
from api.models import Request, Response
from api.routing import API, Call
from penguinmails.config import BillingSettings
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("api", "billing.sql")

# Subscription states in which the plan's tier holds; past_due too (Stripe is retrying the
# payment, and its own dunning settings decide when to cancel).
_CONTINUING = {"active", "trialing", "past_due"}


class CheckoutCreate(Request):
    plan: str = Field(min_length=1, max_length=64, description="A plan id of [billing.plans].")
    success_url: str | None = Field(default=None, max_length=2000)
    cancel_url: str | None = Field(default=None, max_length=2000)


class CheckoutSession(Response):
    id: str = Field(description="The Stripe Checkout session id (cs_...).")
    url: str = Field(description="Send the user's browser here to pay.")


class PortalCreate(Request):
    return_url: str | None = Field(default=None, max_length=2000)


class PortalSession(Response):
    url: str = Field(description="The Stripe customer portal, for this account's customer.")


class Subscription(Response):
    plan: str
    tier: str
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ends_at: datetime | None = Field(description="When the account falls back to free.")


class WebhookReceived(Response):
    received: bool = True
    duplicate: bool = Field(description="true: this event id was handled before; nothing done.")


def _settings(call: Call[Any, Any]) -> BillingSettings:
    billing = call.state.settings.billing
    if not billing.secret_key:
        raise not_found("Billing (not configured on this server)")
    return billing


def _client(billing: BillingSettings) -> stripe.StripeClient:
    base: BaseAddresses | None = {"api": billing.api_base} if billing.api_base else None
    return stripe.StripeClient(billing.secret_key, base_addresses=base, max_network_retries=2)


def _live_account(call: Call[Any, Any]) -> int:
    if call.principal.sandbox:
        raise forbidden("Billing is the live account's: use a live key")
    return call.principal.account_id


async def _stripe(work: Any, params: dict[str, Any]) -> Any:
    """The library's synchronous client, off the event loop."""
    try:
        return await asyncio.to_thread(work, params)
    except stripe.StripeError as exc:
        log.warning("stripe call failed", extra={"action": "stripe_error", "error": str(exc)})
        raise ApiError(502, "UPSTREAM_ERROR", "Stripe refused or could not be reached") from None


@API.route(
    "POST",
    "/billing/checkout",
    summary="Start a Stripe Checkout session to subscribe to a plan",
    tag="Billing",
    body=CheckoutCreate,
    response=CheckoutSession,
    status=201,
    errors=(403, 404, 502),
)
async def create_checkout(call: Call[CheckoutCreate, None]) -> CheckoutSession:
    billing = _settings(call)
    account = _live_account(call)
    plan = billing.plans.get(call.body.plan)
    if plan is None:
        raise validation_error(
            [{"field": "plan", "message": f"one of {', '.join(sorted(billing.plans)) or '(none)'}"}]
        )
    current = await call.pool.fetchrow(SQL["account_subscription"], account)
    metadata = {"tenant_id": str(account), "plan_id": call.body.plan}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": plan.price, "quantity": 1}],
        "success_url": call.body.success_url or billing.success_url,
        "cancel_url": call.body.cancel_url or billing.cancel_url,
        "metadata": metadata,
        "client_reference_id": str(account),
        # The subscription carries it too, so its own events name the account.
        "subscription_data": {"metadata": metadata},
    }
    if current is not None:
        params["customer"] = current["stripe_customer_id"]
    session = await _stripe(_client(billing).v1.checkout.sessions.create, params)
    return CheckoutSession(id=session.id, url=session.url)


@API.route(
    "POST",
    "/billing/portal",
    summary="A link to the Stripe customer portal (invoices, card, cancel)",
    tag="Billing",
    body=PortalCreate,
    body_optional=True,
    response=PortalSession,
    status=201,
    errors=(403, 404, 502),
)
async def create_portal(call: Call[PortalCreate, None]) -> PortalSession:
    billing = _settings(call)
    account = _live_account(call)
    current = await call.pool.fetchrow(SQL["account_subscription"], account)
    if current is None:
        raise not_found("Subscription (subscribe through /billing/checkout first)")
    return_url = (call.body.return_url if call.body else None) or billing.portal_return_url
    params = {"customer": current["stripe_customer_id"], "return_url": return_url}
    session = await _stripe(_client(billing).v1.billing_portal.sessions.create, params)
    return PortalSession(url=session.url)


@API.route(
    "GET",
    "/billing/subscription",
    summary="The account's subscription, as Stripe's webhooks last said",
    tag="Billing",
    response=Subscription,
    errors=(403, 404),
)
async def get_subscription(call: Call[None, None]) -> Subscription:
    account = _live_account(call)
    row = await call.pool.fetchrow(SQL["account_subscription"], account)
    if row is None:
        raise not_found("Subscription")
    return Subscription(**{k: row[k] for k in Subscription.model_fields})


@API.route(
    "POST",
    "/billing/webhook",
    summary="Stripe's webhook (signed with Stripe-Signature)",
    tag="Billing",
    response=WebhookReceived,
    auth=False,
    headers=("Stripe-Signature",),
    errors=(401, 404, 409),
)
async def stripe_webhook(call: Call[None, None]) -> WebhookReceived:
    billing = _settings(call)
    if not billing.webhook_secret:
        raise not_found("Billing webhook (no webhook_secret configured)")
    payload = await call.request.read()
    try:
        event = stripe.Webhook.construct_event(
            payload,
            call.request.headers.get("Stripe-Signature"),
            billing.webhook_secret,
            tolerance=billing.webhook_tolerance,
        )
    except (stripe.SignatureVerificationError, ValueError) as exc:
        log.warning(
            "stripe webhook refused",
            extra={"action": "stripe_webhook_refused", "error": str(exc)[:200]},
        )
        raise unauthorized("Invalid Stripe-Signature") from None
    async with call.pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(SQL["record_event"], event.id, event.type)
        if fresh is None:
            return WebhookReceived(duplicate=True)
        await _apply(conn, billing, event.type, event.to_dict(), event.created)
        await expire(conn)
    log.info("stripe event", extra={"action": "stripe_event", "type": event.type})
    return WebhookReceived(duplicate=False)


def _at(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


async def _apply(
    conn: asyncpg.Connection,
    billing: BillingSettings,
    kind: str,
    event: dict[str, Any],
    created: int,
) -> None:
    obj = event["data"]["object"]
    when = _at(created)
    if kind == "checkout.session.completed":
        if obj.get("mode") != "subscription":
            return
        metadata = obj.get("metadata") or {}
        plan = billing.plans.get(metadata.get("plan_id", ""))
        try:
            account = await conn.fetchval(SQL["live_account"], int(metadata.get("tenant_id", "")))
        except (TypeError, ValueError):
            account = None
        if plan is None or account is None:  # not one of our checkouts: nothing to link
            log.warning("checkout for an unknown plan or account", extra={"action": "stripe_skip"})
            return
        await conn.execute(
            SQL["link_subscription"],
            account,
            obj["customer"],
            obj.get("subscription"),
            metadata["plan_id"],
            plan.tier,
            when,
        )
        await conn.execute(SQL["set_account_tier"], account, plan.tier)
    elif kind == "invoice.paid":
        account = await conn.fetchval(SQL["account_by_customer"], obj.get("customer"))
        if account is None:
            # Before its checkout.session.completed (Stripe does not order events): a non-2xx
            # answer makes Stripe retry it later, by when the customer is linked.
            raise ApiError(409, "CONFLICT", "Customer not linked yet; retry")
        subscription = obj.get("subscription") or (
            ((obj.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        )
        paid = (obj.get("status_transitions") or {}).get("paid_at") or created
        await conn.execute(
            SQL["insert_payment"],
            account,
            obj["id"],
            subscription,
            int(obj.get("amount_paid") or 0),
            str(obj.get("currency") or ""),
            _at(paid),
        )
    elif kind == "customer.subscription.updated":
        row = await conn.fetchrow(SQL["subscription_by_stripe_id"], obj["id"])
        if row is None:
            raise ApiError(409, "CONFLICT", "Subscription not linked yet; retry")
        items = (obj.get("items") or {}).get("data") or [{}]
        price = (items[0].get("price") or {}).get("id")
        plan_id, tier = row["plan"], row["tier"]
        for name, plan in billing.plans.items():
            if plan.price == price:
                plan_id, tier = name, plan.tier
        # Newer API versions keep the period on the item, older on the subscription.
        period_end = _at(obj.get("current_period_end") or items[0].get("current_period_end"))
        status = obj["status"]
        ends_at = None
        if status not in _CONTINUING:
            ends_at = period_end or datetime.now(UTC)
        elif obj.get("cancel_at_period_end"):
            ends_at = period_end
        applied = await conn.execute(
            SQL["update_subscription"],
            obj["id"],
            plan_id,
            tier,
            status,
            period_end,
            bool(obj.get("cancel_at_period_end")),
            ends_at,
            when,
        )
        if applied != "UPDATE 0" and (status in _CONTINUING):
            await conn.execute(SQL["set_account_tier"], row["account_id"], tier)


async def expire(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Move accounts whose subscription has ended back to free; how many tenant rows."""
    rows = await conn.fetch(SQL["expire_subscriptions"])
    if rows:
        log.info("subscriptions ended", extra={"action": "billing_expire", "rows": len(rows)})
    return len(rows)
