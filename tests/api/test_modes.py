"""Test and live mode are two worlds (Stripe's model): a key or token of one mode sees and
changes only the objects of that mode, nothing a test principal makes can act live, and
test-mode mail never reaches a real MX host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
import pytest

from mta.domains import add_domain
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import Client, assert_error

PASSWORD = "correct horse battery staple"


def _campaign(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "Launch",
        "subject": "Hello",
        "from": {"email": "news@acme.test"},
        "content": {"text": "Hi"},
        "recipients": [{"email": "ann@dest.test"}],
    }
    body.update(changes)
    return body


@pytest.fixture
async def live(client: Client, live_key: str, pool: asyncpg.Pool, settings: Settings) -> Client:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
    return client.with_key(live_key)


async def test_a_test_key_cannot_reach_live_objects(client: Client, live: Client) -> None:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    campaign = (await live.post("/campaigns", json=_campaign())).data
    sent = await live.post(f"/campaigns/{campaign['id']}/send", json={"send_at": later})
    assert sent.status == 202 and sent.data["status"] == "scheduled"
    contact = (await live.post("/contacts", json={"email": "bob@dest.test"})).data
    assert (await live.post("/suppressions", json={"email": "eve@dest.test"})).status == 201
    hook = (await live.post("/webhooks", json={"url": "https://hooks.acme.test/in"})).data
    assert campaign["livemode"] is True and contact["livemode"] is True

    # The test key of the same account: every live object is simply not there.
    assert_error(await client.post(f"/campaigns/{campaign['id']}/cancel"), 404, "NOT_FOUND")
    assert_error(await client.get(f"/campaigns/{campaign['id']}"), 404, "NOT_FOUND")
    assert_error(await client.get(f"/contacts/{contact['id']}"), 404, "NOT_FOUND")
    assert_error(await client.delete("/suppressions/eve@dest.test"), 404, "NOT_FOUND")
    moved = await client.patch(f"/webhooks/{hook['id']}", json={"url": "https://evil.test/x"})
    assert_error(moved, 404, "NOT_FOUND")
    for path in ("/campaigns", "/contacts", "/suppressions", "/webhooks"):
        assert (await client.get(path)).data["items"] == [], path
    [own_key] = (await client.get("/api-keys")).data["items"]
    assert own_key["mode"] == "test" and own_key["livemode"] is False

    # ... and the live objects are untouched.
    assert (await live.get(f"/campaigns/{campaign['id']}")).data["status"] == "scheduled"
    assert [s["email"] for s in (await live.get("/suppressions")).data["items"]] == [
        "eve@dest.test"
    ]
    assert (await live.get(f"/webhooks/{hook['id']}")).data["url"] == "https://hooks.acme.test/in"


async def test_a_live_key_does_not_see_test_objects(client: Client, live: Client) -> None:
    made = (await client.post("/contacts", json={"email": "tess@dest.test"})).data
    assert made["livemode"] is False
    assert_error(await live.get(f"/contacts/{made['id']}"), 404, "NOT_FOUND")
    assert (await live.get("/contacts")).data["items"] == []


async def test_a_test_user_logs_in_to_test_mode_only(
    client: Client, live: Client, pool: asyncpg.Pool
) -> None:
    made = await client.post("/users", json={"email": "ann@acme.test", "password": PASSWORD})
    assert made.status == 201 and made.data["livemode"] is False
    login = await client.post(
        "/auth/login", json={"email": "ann@acme.test", "password": PASSWORD}, key=None
    )
    token = login.data["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["mode"] == "test"
    user = client.with_key(token)

    # It cannot make anything live: no live key, and its sends are sandbox sends.
    assert_error(await user.post("/api-keys", json={"mode": "live"}), 403, "FORBIDDEN")
    made_key = (await user.post("/api-keys", json={})).data
    assert made_key["key"].startswith("sk_test_") and made_key["livemode"] is False
    sent = await user.post(
        "/emails/send",
        json={
            "from": {"email": "news@acme.test"},
            "to": "ann@dest.test",
            "subject": "Hi",
            "content": {"text": "Hi"},
        },
    )
    assert sent.status == 202 and sent.data["sandbox"] is True and sent.data["livemode"] is False
    row = await pool.fetchrow(
        "SELECT m.sandbox, t.mode FROM messages m JOIN tenants t ON t.id = m.tenant_id"
    )
    assert row["sandbox"] is True and row["mode"] == "test"
    # Nor can it see live objects.
    live_contact = (await live.post("/contacts", json={"email": "liv@dest.test"})).data
    assert_error(await user.get(f"/contacts/{live_contact['id']}"), 404, "NOT_FOUND")
    # The live key does not see the test user.
    assert (await live.get("/users")).data["items"] == []


async def test_idempotency_keys_are_per_mode(client: Client, live: Client) -> None:
    body = {
        "from": {"email": "news@acme.test"},
        "to": "ann@dest.test",
        "subject": "Hi",
        "content": {"text": "Hi"},
    }
    headers = {"Idempotency-Key": "order-42"}
    test_send = await client.post("/emails/send", json=body, headers=headers)
    live_send = await live.post("/emails/send", json=body, headers=headers)
    assert test_send.status == 202 and live_send.status == 202  # neither is a replay
    assert test_send.data["message_id"] != live_send.data["message_id"]
    assert live_send.data["sandbox"] is False and live_send.data["livemode"] is True
    again = await live.post("/emails/send", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == live_send.data


async def test_no_path_queues_test_mode_mail_for_a_real_mx(pool: asyncpg.Pool) -> None:
    """Even a caller that bypasses the API cannot queue a test-mode message as live mail."""
    test_tenant = await ensure_tenant(pool, "acme", mode="test")
    draft = Draft(from_email="news@acme.test", subject="S", recipients=["ann@dest.test"], text="t")
    with pytest.raises(asyncpg.CheckViolationError, match="test-mode message"):
        await enqueue(pool, test_tenant, draft)
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
    draft.sandbox = True
    assert len(await enqueue(pool, test_tenant, draft)) == 1
