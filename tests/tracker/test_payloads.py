"""Webhook payloads in the documented shape, through the real tracker and dispatcher to a real
receiver: opens and clicks with their message, campaign and analytics, campaign events, and
never an integer key."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg

from penguinmails.webhooks.endpoints import create_endpoint
from tests.helpers import Receiver, verify, wait_for
from tracker.dispatcher import RetryPolicy
from tracker.hits import Hit, HitRecorder
from tracker.metrics import TrackerMetrics

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/15E148"
)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.6367.82 Mobile Safari/537.36"
)


def integers(value: Any, path: str = "") -> list[str]:
    """The paths of every integer in a payload."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in integers(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in integers(item, f"{path}[{i}]")]
    return [path] if type(value) is int else []


def no_row_keys(payload: dict[str, Any]) -> None:
    """Integers are counts and codes; every id (`id`, `..._id`) is a public id string."""
    for path in integers(payload):
        key = path.rsplit(".", 1)[-1]
        assert key != "id" and not key.endswith("_id"), path


async def message_ids(pool: asyncpg.Pool, message: int) -> tuple[str, str, str]:
    row = await pool.fetchrow(
        "SELECT public_id, message_id, recipient FROM messages WHERE id = $1", message
    )
    return row["public_id"], row["message_id"], row["recipient"]


async def test_open_and_click_payloads_carry_the_email_and_its_analytics(
    pool, settings, tenant, links, make_campaign, sent_messages, start_tracker, receiver, http
):
    campaign, campaign_public = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    _, secret = await create_endpoint(
        pool, tenant, receiver.url(), ["email.opened", "email.clicked"], settings=settings
    )
    tracker = await start_tracker()
    base = tracker.url
    # Behind our own reverse proxy (the tracker sees loopback), X-Forwarded-For is the reader.
    hits = [
        (links.open_url(message), IPHONE, "81.2.69.160"),  # a phone in the UK
        (links.open_url(message), OUTLOOK, "8.8.8.8"),  # a desktop in the US
        (links.click_url(message, 2, "https://acme.test/pricing"), ANDROID, "2a00:1450:4001::1"),
    ]
    for url, agent, address in hits:
        headers = {"User-Agent": agent, "X-Forwarded-For": address}
        async with http.get(
            base + url.removeprefix("http://tracker.test"), headers=headers, allow_redirects=False
        ) as response:
            assert response.status in (200, 302)
    await wait_for(lambda: len(receiver.accepted()) == 3)

    payloads = sorted((verify(secret, r) for r in receiver.requests), key=lambda p: p["created"])
    public_id, rfc_id, recipient = await message_ids(pool, message)
    events = await pool.fetch(
        "SELECT public_id, type FROM events WHERE message_id = $1 ORDER BY id", message
    )
    assert [p["id"] for p in payloads] == [e["public_id"] for e in events]
    assert [p["type"] for p in payloads] == ["email.opened", "email.opened", "email.clicked"]

    def email(at: str, when: str) -> dict[str, Any]:
        return {
            "id": public_id,
            "campaign_id": campaign_public,
            "to": recipient,
            "message_id": rfc_id,
            at: when,
            "tags": [],
            "metadata": {},
        }

    first, second, click = payloads
    assert first["data"] == {
        "email": email("opened_at", first["created"]),
        "analytics": {
            "open_count": 1,
            "click_count": 0,
            "device_type": "mobile",
            "location": "United Kingdom",
            "country_code": "GB",
        },
        "unique": True,
        "machine": False,
        "user_agent": IPHONE,
        "ip_prefix": "81.2.69.0/24",
    }
    assert second["data"]["email"] == email("opened_at", second["created"])
    assert second["data"]["analytics"] == {
        "open_count": 2,
        "click_count": 0,
        "device_type": "desktop",
        "location": "United States",
        "country_code": "US",
    }
    assert second["data"]["unique"] is False
    assert click["data"]["email"] == email("clicked_at", click["created"])
    assert click["data"]["analytics"] == {
        "open_count": 2,
        "click_count": 1,
        "device_type": "mobile",
        "location": "Germany",
        "country_code": "DE",
    }
    assert (click["data"]["url"], click["data"]["link_index"]) == ("https://acme.test/pricing", 2)
    for payload in payloads:
        no_row_keys(payload)
        assert payload["created"].endswith("Z")

    # The event rows keep what the API's breakdowns group by, under exactly these keys, and
    # only the network of the address.
    stored = await pool.fetch(
        "SELECT data, data::text AS text FROM events WHERE message_id = $1 ORDER BY id", message
    )
    assert [(r["data"]["device_type"], r["data"]["country_code"]) for r in stored] == [
        ("mobile", "GB"),
        ("desktop", "US"),
        ("mobile", "DE"),
    ]
    assert stored[0]["data"]["country"] == "United Kingdom"
    for row in stored:
        for address in ("81.2.69.160", "8.8.8.8", "2a00:1450:4001::1"):
            assert address not in row["text"]


async def test_a_loopback_reader_has_no_country(
    pool, settings, tenant, links, sent_messages, start_tracker, receiver, http
):
    (message,) = await sent_messages()
    _, secret = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    tracker = await start_tracker()
    url = tracker.url + links.open_url(message).removeprefix("http://tracker.test")
    async with http.get(url, headers={"User-Agent": IPHONE}) as response:
        assert response.status == 200
    async with http.get(url, skip_auto_headers=["User-Agent"]) as response:
        assert response.status == 200
    await wait_for(lambda: len(receiver.accepted()) == 2)
    payloads = sorted((verify(secret, r) for r in receiver.requests), key=lambda p: p["created"])
    assert [p["data"]["analytics"] for p in payloads] == [
        {
            "open_count": 1,
            "click_count": 0,
            "device_type": "mobile",
            "location": None,
            "country_code": None,
        },
        {
            "open_count": 2,
            "click_count": 0,
            "device_type": "unknown",
            "location": None,
            "country_code": None,
        },
    ]
    # Present and null, not missing: a breakdown groups them as "no country".
    (data, _) = [r["data"] for r in await pool.fetch("SELECT data FROM events ORDER BY id")]
    assert {"device_type", "country", "country_code"} <= data.keys()
    assert data["country"] is None and data["country_code"] is None


async def test_a_retried_delivery_sends_the_same_bytes(
    pool, settings, tenant, make_campaign, sent_messages, start_tracker, receiver
):
    campaign, _ = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    receiver.status = 503
    await start_tracker(
        dispatcher={"policy": RetryPolicy(first_delay=0.05, max_delay=0.1), "poll_interval": 0.05}
    )
    recorder = HitRecorder(pool, TrackerMetrics())
    writing = asyncio.create_task(recorder.run())
    hit = Hit(
        "email.opened", message, datetime.now(UTC), IPHONE, "81.2.69.0/24", None, None, None,
        "mobile", "United Kingdom", "GB",
    )  # fmt: skip
    assert await recorder.record(hit)
    recorder.close()
    await writing
    await wait_for(lambda: len(receiver.requests) >= 3)
    receiver.status = 200
    await wait_for(lambda: receiver.accepted())
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for request in receiver.requests:
        bodies[request.webhook_id].add(request.body)
    assert len(bodies) == 1 and len(next(iter(bodies.values()))) == 1


async def test_campaign_events_carry_the_campaign(
    pool, settings, tenant, make_campaign, sent_messages, start_tracker, receiver
):
    campaign, campaign_public = await make_campaign(name="Spring launch")
    _, secret = await create_endpoint(
        pool, tenant, receiver.url(), ["campaign.*"], settings=settings
    )
    # campaign.created as the API records it: the campaign's own name and status in the data.
    await pool.execute(
        "INSERT INTO events (tenant_id, campaign_id, type, data)"
        " VALUES ($1, $2, 'campaign.created', $3)",
        tenant,
        campaign,
        {"name": "Spring launch", "status": "draft", "recipient_count": 1},
    )
    # campaign.completed as the database records it when the last message is final.
    await sent_messages(campaign_id=campaign)
    await start_tracker()
    await wait_for(lambda: len(receiver.accepted()) == 2)
    created, completed = sorted(
        (verify(secret, r) for r in receiver.requests), key=lambda p: p["created"]
    )
    assert created["type"] == "campaign.created"
    assert created["data"] == {
        "campaign": {
            "id": campaign_public,
            "name": "Spring launch",
            "status": "draft",
            "recipient_count": 1,
        }
    }
    assert completed["type"] == "campaign.completed"
    # The stored data names no key; the payload names the campaign by its public id.
    stored = await pool.fetchval("SELECT data FROM events WHERE type = 'campaign.completed'")
    assert "campaign_id" not in stored
    assert completed["data"] == {
        "campaign": {
            "id": campaign_public,
            "name": "Spring launch",
            "status": "completed",
            "recipient_count": 0,
        }
    }
    for payload in (created, completed):
        no_row_keys(payload)
        assert payload["id"].startswith("evt_")


async def test_concurrent_hits_on_one_message_get_exact_running_counts(pool, sent_messages):
    """Several writers, batches of a few hits: every open has its own count, 1 to N."""
    (message,) = await sent_messages()
    recorder = HitRecorder(pool, TrackerMetrics(), max_batch=3, writers=4)
    writing = asyncio.create_task(recorder.run())
    kinds = ["email.opened"] * 40 + ["email.clicked"] * 20
    results = await asyncio.gather(
        *(
            recorder.record(Hit(kind, message, datetime.now(UTC), OUTLOOK, None, None))
            for kind in kinds
        )
    )
    recorder.close()
    await writing
    assert all(results)
    rows = await pool.fetch("SELECT type, data FROM events ORDER BY id")
    opens = sorted(r["data"]["open_count"] for r in rows if r["type"] == "email.opened")
    clicks = sorted(r["data"]["click_count"] for r in rows if r["type"] == "email.clicked")
    assert opens == list(range(1, 41))
    assert clicks == list(range(1, 21))
    # The hit that counted 1 is the first of its kind, and the only one.
    firsts = await pool.fetch("SELECT type, data FROM events WHERE is_unique ORDER BY type")
    assert [(r["type"], r["data"]["unique"]) for r in firsts] == [
        ("email.clicked", True),
        ("email.opened", True),
    ]
    assert firsts[0]["data"]["click_count"] == 1 and firsts[1]["data"]["open_count"] == 1
    assert await pool.fetchrow(
        "SELECT opens, clicks FROM engagement_counts WHERE message_id = $1", message
    ) == (40, 20)


async def test_no_payload_shows_a_row_key(
    pool, settings, tenant, make_campaign, sent_messages, start_tracker, receiver
):
    """Not the event data's integer keys (a bounce's inbound log row), not webhook.disabled's."""
    campaign, _ = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    gone = await Receiver().start()
    try:
        gone.status = 410
        await create_endpoint(pool, tenant, gone.url(), ["email.bounced"], settings=settings)
        _, secret = await create_endpoint(
            pool, tenant, receiver.url(), ["webhook.disabled", "email.*"], settings=settings
        )
        _, rfc_id, recipient = await message_ids(pool, message)
        # As the MTA and inbound write them: the MTA's copy of the recipient and Message-ID,
        # inbound's log row key; a reply's own Message-ID.
        for kind, data in [
            (
                "email.bounced",
                {"smtp_code": 550, "recipient": recipient, "message_id": rfc_id, "inbound_id": 5},
            ),
            ("email.replied", {"from": "ann@dest.test", "message_id": "re-1@dest.test"}),
        ]:
            await pool.execute(
                "INSERT INTO events (tenant_id, message_id, campaign_id, type, data)"
                " VALUES ($1, $2, $3, $4, $5)",
                tenant,
                message,
                campaign,
                kind,
                data,
            )
        await start_tracker()
        await wait_for(lambda: len(receiver.accepted()) == 3)
    finally:
        await gone.down()
    by_type = {p["type"]: p for p in (verify(secret, r) for r in receiver.requests)}
    for payload in by_type.values():
        no_row_keys(payload)
    bounced = by_type["email.bounced"]["data"]
    assert bounced["email"]["to"] == recipient and bounced["email"]["message_id"] == rfc_id
    assert bounced.keys() == {"email", "smtp_code"}  # no copies, no inbound row key
    assert bounced["email"]["campaign_id"].startswith("campaign_")
    replied = by_type["email.replied"]["data"]
    assert replied["message_id"] == "re-1@dest.test"  # the reply's own, kept beside email
    assert replied["email"]["message_id"] == rfc_id
    assert by_type["webhook.disabled"]["data"]["webhook_id"].startswith("wh_")
