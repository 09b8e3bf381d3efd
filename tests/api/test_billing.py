"""Stripe billing against a local fake of the two Stripe calls we make (the library's base URL
pointed at it) and webhook events in Stripe's test-mode shapes, signed with the library's own
signing scheme. Nothing reaches the internet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import stripe

from api.billing import expire
from api.server import ApiServer
from penguinmails.config import Settings
from tests.helpers import Client, assert_error
from tests.stripe_fake import FakeStripe

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
PRICE_PRO = "price_1PenguinPro"
PRICE_STARTER = "price_1PenguinStarter"


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = await FakeStripe().start()
    yield fake
    assert fake.runner is not None
    await fake.runner.cleanup()


@pytest.fixture
async def billing_api(
    start_api: Callable[..., Awaitable[ApiServer]],
    make_settings: Callable[..., Settings],
    fake_stripe: FakeStripe,
) -> ApiServer:
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        billing={
            "secret_key": "sk_test_stripe_fake",
            "webhook_secret": WEBHOOK_SECRET,
            "api_base": fake_stripe.url,
            "plans": {
                "pro": {"price": PRICE_PRO, "tier": "professional"},
                "starter": {"price": PRICE_STARTER, "tier": "starter"},
            },
        },
    )
    return await start_api(settings)


@pytest.fixture
async def owner(
    billing_api: ApiServer, http: aiohttp.ClientSession, make_key: Callable[..., Awaitable[str]]
) -> Client:
    """A live key of a free account."""
    return Client(http, billing_api.url + "/api/v1", await make_key("acme"))


def event(kind: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """An event as Stripe's test mode sends it."""
    return {
        "id": f"evt_test_{kind.replace('.', '_')}_{time.monotonic_ns()}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created or int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj},
    }


async def deliver(
    client: Client,
    body: dict[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    tamper: bool = False,
) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(
        raw.decode(), secret, timestamp=timestamp
    )
    if tamper:
        raw = raw.replace(b"professional", b"enterprise").replace(b'"pro"', b'"ent"')
    return await client.post(
        "/billing/webhook",
        data=raw,
        key=None,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def completed(account: int, plan: str = "pro") -> dict[str, Any]:
    return event(
        "checkout.session.completed",
        {
            "id": "cs_test_a1B2c3",
            "object": "checkout.session",
            "mode": "subscription",
            "customer": "cus_TestPenguin",
            "subscription": "sub_TestPenguin",
            "payment_status": "paid",
            "status": "complete",
            "client_reference_id": str(account),
            "metadata": {"tenant_id": str(account), "plan_id": plan},
        },
    )


def subscription_updated(status: str, period_end: int, **extra: Any) -> dict[str, Any]:
    return event(
        "customer.subscription.updated",
        {
            "id": "sub_TestPenguin",
            "object": "subscription",
            "customer": "cus_TestPenguin",
            "status": status,
            "cancel_at_period_end": False,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": "si_1",
                        "object": "subscription_item",
                        "price": {"id": PRICE_PRO, "object": "price"},
                        "current_period_end": period_end,
                    }
                ],
            },
            **extra,
        },
    )


async def account_of(pool: asyncpg.Pool, name: str = "acme") -> int:
    value: int = await pool.fetchval("SELECT id FROM tenants WHERE name = $1", name)
    return value


async def limit(client: Client) -> str:
    reply = await client.get("/campaigns")
    assert reply.status == 200, reply.body
    return str(reply.headers["X-RateLimit-Limit"])


async def test_checkout_creates_a_subscription_session(
    owner: Client, fake_stripe: FakeStripe, pool: asyncpg.Pool
) -> None:
    reply = await owner.post("/billing/checkout", json={"plan": "pro"})
    assert reply.status == 201, reply.body
    assert reply.data == {
        "id": "cs_test_a1B2c3",
        "url": "https://checkout.stripe.com/c/pay/cs_test_a1B2c3",
    }
    path, form, authorization = fake_stripe.requests[-1]
    account = await account_of(pool)
    assert path == "/v1/checkout/sessions"
    assert authorization == "Bearer sk_test_stripe_fake"
    assert form["mode"] == "subscription"
    assert form["line_items[0][price]"] == PRICE_PRO
    assert form["line_items[0][quantity]"] == "1"
    assert form["metadata[tenant_id]"] == str(account)
    assert form["metadata[plan_id]"] == "pro"
    assert form["subscription_data[metadata][tenant_id]"] == str(account)
    assert form["success_url"].endswith("checkout=success")
    assert form["cancel_url"].endswith("checkout=canceled")

    assert_error(
        await owner.post("/billing/checkout", json={"plan": "gold"}), 422, "VALIDATION_ERROR"
    )
    # No subscription yet: no portal.
    assert_error(await owner.post("/billing/portal"), 404, "NOT_FOUND")


async def test_test_keys_cannot_touch_billing(
    owner: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    test = owner.with_key(await make_key("acme", test=True))
    assert_error(await test.post("/billing/checkout", json={"plan": "pro"}), 403, "FORBIDDEN")


async def test_a_signed_checkout_moves_the_tenant_to_professional_and_cancel_moves_it_back(
    owner: Client, fake_stripe: FakeStripe, pool: asyncpg.Pool
) -> None:
    account = await account_of(pool)
    assert await limit(owner) == "1000"  # free

    done = completed(account)
    reply = await deliver(owner, done)
    assert reply.status == 200, reply.body
    assert reply.data == {"received": True, "duplicate": False}
    assert await limit(owner) == "100000"  # the very next request
    assert await pool.fetchval("SELECT tier FROM tenants WHERE id = $1", account) == (
        "professional"
    )

    # The same event again, freshly signed: handled once only.
    reply = await deliver(owner, done)
    assert reply.status == 200 and reply.data["duplicate"] is True

    # invoice.paid records the payment (and only once).
    paid = event(
        "invoice.paid",
        {
            "id": "in_test_1",
            "object": "invoice",
            "customer": "cus_TestPenguin",
            "subscription": "sub_TestPenguin",
            "amount_paid": 9900,
            "currency": "usd",
            "status": "paid",
            "status_transitions": {"paid_at": int(time.time())},
        },
    )
    assert (await deliver(owner, paid)).status == 200
    assert (await deliver(owner, paid)).data["duplicate"] is True
    payment = await pool.fetchrow("SELECT account_id, amount_paid, currency FROM payments")
    assert dict(payment) == {"account_id": account, "amount_paid": 9900, "currency": "usd"}

    # The portal opens on the customer the checkout linked.
    reply = await owner.post("/billing/portal", json={})
    assert reply.status == 201 and reply.data["url"].startswith("https://billing.stripe.com/")
    assert fake_stripe.requests[-1][1]["customer"] == "cus_TestPenguin"

    # Canceled, with the paid period running for two more seconds: professional until then.
    period_end = int(time.time()) + 2
    reply = await deliver(owner, subscription_updated("canceled", period_end))
    assert reply.status == 200, reply.body
    assert await limit(owner) == "100000"
    sub = (await owner.get("/billing/subscription")).data
    assert sub["status"] == "canceled" and sub["ends_at"] is not None
    await asyncio.sleep(2.2)
    assert await expire(pool) == 2  # the live row and its test twin, as housekeeping does
    assert await limit(owner) == "1000"
    assert (await owner.get("/billing/subscription")).data["tier"] == "free"


async def test_bad_signatures_old_timestamps_and_late_events_change_nothing(
    owner: Client, pool: asyncpg.Pool
) -> None:
    account = await account_of(pool)
    for reply in (
        await deliver(owner, completed(account), tamper=True),
        await deliver(owner, completed(account), secret="whsec_someone_else"),
        await deliver(owner, completed(account), timestamp=int(time.time()) - 3600),
        await owner.post(
            "/billing/webhook",
            data=orjson.dumps(completed(account)),
            key=None,
            headers={"Content-Type": "application/json"},
        ),
    ):
        assert_error(reply, 401, "UNAUTHORIZED")
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 0
    assert await limit(owner) == "1000"

    # An event for a subscription not linked yet is refused (Stripe retries it later) and
    # leaves no trace, so its retry is handled.
    early = subscription_updated("active", int(time.time()) + 86400)
    assert_error(await deliver(owner, early), 409, "CONFLICT")
    assert (await deliver(owner, completed(account))).status == 200
    assert (await deliver(owner, early)).data["duplicate"] is False
    # An older event arriving after a newer one changes nothing.
    stale = subscription_updated("canceled", int(time.time()) - 10)
    stale["created"] = int(time.time()) - 600
    assert (await deliver(owner, stale)).status == 200
    assert await limit(owner) == "100000"
