"""Zapier as its platform calls us: a REST hook fed by a real open through the tracker's
dispatcher, the polling fallback and samples, the actions, and the documentation's incoming
hook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from api.server import ApiServer
from penguinmails.config import Settings
from penguinmails.links import Links
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from penguinmails.webhooks.endpoints import EVENT_TYPES
from tests.helpers import Client, Receiver, assert_error, wait_for
from tracker.server import Tracker

WELCOME: dict[str, Any] = {
    "name": "welcome_series",
    "from": {"email": "sales@acme.test", "name": "Acme Sales"},
    "steps": [{"subject": 'Welcome {{first_name | default: "there"}}', "content": {"text": "Hi"}}],
}
HUMAN = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/125.0"}


@pytest.fixture
async def api(start_api: Callable[..., Awaitable[ApiServer]]) -> ApiServer:
    return await start_api(sequence_interval=None)


@pytest.fixture
async def tracker(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> AsyncIterator[Tracker]:
    """The tracker whose dispatcher delivers webhooks (the API's server keys, so it unseals
    what the API sealed)."""
    settings = make_settings(
        tracker={"listen": "127.0.0.1:0"}, webhooks={"allow_private_targets": True}
    )
    tracker = await Tracker(pool, settings, dispatcher={"poll_interval": 0.05}).start()
    yield tracker
    await tracker.close()


async def test_a_rest_hook_receives_a_real_open_and_unsubscribe_stops_it(
    client: Client,
    receiver: Receiver,
    tracker: Tracker,
    pool: asyncpg.Pool,
    settings: Settings,
    http: Any,
) -> None:
    hook = await client.post(
        "/zapier/hooks", json={"target_url": receiver.url(), "event": "email.opened"}
    )
    assert hook.status == 201, hook.body
    assert hook.data["event"] == "email.opened" and hook.data["id"].startswith("wh_")

    sent = await client.post(
        "/emails/send",
        json={
            "from": "news@acme.test",
            "to": ["ann@dest.test"],
            "subject": "Hello",
            "content": {"html": "<p>Hello Ann</p>"},
        },
    )
    assert sent.status == 202, sent.body
    public_id = sent.data["message_id"]
    queue_id = await pool.fetchval("SELECT id FROM messages WHERE public_id = $1", public_id)
    # As delivered an hour ago (an open right after sending looks like a scanner's).
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = now() - interval '1 hour' WHERE id = $1",
        queue_id,
    )
    pixel = Links(LinkSigner(server_keys(settings)), tracker.url).open_url(queue_id)
    async with http.get(pixel, headers=HUMAN) as response:
        assert response.status == 200

    await wait_for(lambda: len(receiver.accepted()) == 1)
    [delivered] = [orjson.loads(r.body) for r in receiver.accepted()]
    assert delivered["type"] == "email.opened"  # email.sent and the rest: not subscribed
    assert delivered["data"]["email"]["id"] == public_id
    assert delivered["data"]["email"]["to"] == "ann@dest.test"

    # The polling fallback lists the same body.
    polled = await client.get("/zapier/triggers/email.opened")
    assert polled.status == 200 and polled.data["items"] == [delivered]

    gone = await client.delete(f"/zapier/hooks/{hook.data['id']}")
    assert gone.status == 200 and gone.data == {"id": hook.data["id"], "deleted": True}
    async with http.get(pixel, headers=HUMAN) as response:
        assert response.status == 200

    async def opens() -> bool:
        n = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.opened'")
        return bool(n == 2)

    await wait_for(opens)
    await asyncio.sleep(0.5)  # ten dispatcher polls
    assert len(receiver.requests) == 1
    assert len((await client.get("/zapier/triggers/email.opened")).data["items"]) == 2
    assert_error(await client.delete(f"/zapier/hooks/{hook.data['id']}"), 404, "NOT_FOUND")


async def test_triggers_samples_and_subscribe_checks(
    client: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    triggers = (await client.get("/zapier/triggers")).data["items"]
    assert [t["event"] for t in triggers] == list(EVENT_TYPES)
    opened = next(t["sample"] for t in triggers if t["event"] == "email.opened")
    assert opened["type"] == "email.opened"
    assert set(opened["data"]) >= {"email", "analytics"}
    assert opened["data"]["email"]["opened_at"] == opened["created"]
    me = (await client.get("/zapier/me")).data
    assert me == {"account": "acme", "livemode": False, "tier": "enterprise"}

    bad = await client.post("/zapier/hooks", json={"target_url": "https://x.test/h", "event": "x"})
    assert_error(bad, 422, "VALIDATION_ERROR")
    assert_error(await client.get("/zapier/triggers/email.nope"), 404, "NOT_FOUND")
    # REST hooks are webhooks: the professional tier's.
    free = client.with_key(await make_key("globex", tier="free", test=True))
    reply = await free.post(
        "/zapier/hooks", json={"target_url": "https://x.test/h", "event": "email.opened"}
    )
    assert_error(reply, 403, "TIER_REQUIRED")
    assert (await free.get("/zapier/triggers/email.opened")).data["items"] == []


async def test_actions(client: Client, pool: asyncpg.Pool) -> None:
    made = await client.post(
        "/zapier/actions/contacts",
        json={
            "email": "Ann@Dest.test",
            "first_name": "Ann",
            "tags": ["lead"],
            "custom_fields": {"plan": "basic"},
        },
    )
    assert made.status == 200, made.body
    again = await client.post(
        "/zapier/actions/contacts",
        json={
            "email": "ann@dest.test",
            "company": "Dest",
            "tags": ["vip", "lead"],
            "custom_fields": {"score": 7},
        },
    )
    assert again.status == 200 and again.data["id"] == made.data["id"]
    assert again.data["first_name"] == "Ann" and again.data["company"] == "Dest"
    assert again.data["tags"] == ["lead", "vip"]
    assert again.data["custom_fields"] == {"plan": "basic", "score": 7}

    tagged = await client.post(
        "/zapier/actions/tags", json={"email": "ann@dest.test", "tag": "hot"}
    )
    assert tagged.status == 200 and tagged.data["tags"] == ["lead", "vip", "hot"]

    sent = await client.post(
        "/zapier/actions/emails",
        json={
            "to": "ann@dest.test",
            "from": "news@acme.test",
            "subject": "Hi",
            "text": "Hello from a Zap",
        },
    )
    assert sent.status == 202, sent.body
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE public_id = $1", sent.data["message_id"]
        )
        == 1
    )

    assert_error(
        await client.post(
            "/zapier/actions/enrollments", json={"email": "bob@dest.test", "sequence": "nope"}
        ),
        404,
        "NOT_FOUND",
    )
    assert (await client.post("/sequences", json=WELCOME)).status == 201
    enrolled = await client.post(
        "/zapier/actions/enrollments", json={"email": "bob@dest.test", "sequence": "welcome_series"}
    )
    assert enrolled.status == 201, enrolled.body
    assert enrolled.data["email"] == "bob@dest.test"


async def test_the_documented_incoming_hook(client: Client, pool: asyncpg.Pool) -> None:
    subscriber = {
        "trigger_type": "new_subscriber",
        "data": {"email": "cy@dest.test", "first_name": "Cy", "source": "Landing Page"},
    }
    # No welcome_series yet: nothing is made.
    assert_error(await client.post("/zapier/incoming", json=subscriber), 404, "NOT_FOUND")
    assert await pool.fetchval("SELECT count(*) FROM contacts") == 0

    assert (await client.post("/sequences", json=WELCOME)).status == 201
    reply = await client.post("/zapier/incoming", json=subscriber)
    assert reply.status == 201, reply.body
    contact = reply.data["contact"]
    assert contact["first_name"] == "Cy"
    assert contact["custom_fields"] == {
        "zapier_trigger": "new_subscriber",
        "source": "Landing Page",
    }
    assert contact["tags"] == ["zapier_subscriber", "landing_page"]
    assert reply.data["enrollment"]["contact_id"] == contact["id"]
    # Its first step is queued at once.
    assert (
        await pool.fetchval("SELECT count(*) FROM messages WHERE recipient = 'cy@dest.test'") == 1
    )

    purchase = {
        "trigger_type": "purchase_made",
        "data": {"email": "cy@dest.test", "total": "49.00", "order_id": "1001"},
    }
    reply = await client.post("/zapier/incoming", json=purchase)
    assert reply.status == 201 and reply.data["enrollment"] is None
    assert reply.data["contact"]["custom_fields"]["last_purchase_total"] == "49.00"
    assert "zapier_customer" in reply.data["contact"]["tags"]
    bad = await client.post("/zapier/incoming", json={"trigger_type": "other", "data": {}})
    assert_error(bad, 422, "VALIDATION_ERROR")
