"""Conversions over real HTTP: from a tracked click's landing page with the token the real
tracker added (no key, CORS), or with a secret key naming the message; one use per token;
the events in the conversion's transaction; the list; test mode as its own world."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
import yarl

from api.server import ApiServer
from penguinmails import conversions
from penguinmails.config import Settings
from penguinmails.links import Links
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from tests.helpers import Client, assert_error, campaign_keys, create_campaign
from tracker.server import Tracker

SHOP = "https://shop.test/checkout?item=7#pay"
ORIGIN = {"Origin": "https://shop.test"}


@pytest.fixture
async def tracker(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Tracker]:
    async with Tracker(pool, settings, dispatch=False) as running:
        yield running


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The API's and the tracker's: one server key, as on one installation."""
    return make_settings(
        api={"listen": "127.0.0.1:0"},
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
    )


async def _campaign(client: Client, pool: asyncpg.Pool, count: int = 2) -> dict[str, Any]:
    """A sent campaign (test mode): its public id and its messages' keys and public ids."""
    made = await create_campaign(
        client,
        recipients=[{"email": f"r{i}@dest.test"} for i in range(count)],
        content={"html": f'<p><a href="{SHOP}">Buy</a></p>'},
    )
    assert (await client.post(f"/campaigns/{made['id']}/send")).status == 202
    key, public_id = await campaign_keys(pool, made["id"])
    rows = await pool.fetch(
        "SELECT id, public_id FROM messages WHERE campaign_id = $1 ORDER BY id", key
    )
    return {"id": public_id, "key": key, "messages": [(r["id"], r["public_id"]) for r in rows]}


async def _click(
    http: aiohttp.ClientSession, tracker: Tracker, settings: Settings, queue_id: int
) -> str:
    """Follow the message's tracked link at the real tracker; the token its redirect adds."""
    links = Links(LinkSigner(server_keys(settings)), settings.tracker.base_url)
    path = links.click_url(queue_id, 0, SHOP).removeprefix(settings.tracker.base_url)
    async with http.get(tracker.url + path, allow_redirects=False) as response:
        assert response.status == 302
        location = yarl.URL(response.headers["Location"])
    assert (location.host, location.path, location.fragment) == ("shop.test", "/checkout", "pay")
    assert location.query["item"] == "7"
    return str(location.query["pm_cv"])


async def test_the_landing_page_of_a_click_reports_a_conversion_without_a_key(
    client: Client,
    pool: asyncpg.Pool,
    tracker: Tracker,
    settings: Settings,
    http: aiohttp.ClientSession,
    tenant_id: int,
    live_key: str,
) -> None:
    campaign = await _campaign(client, pool)
    queue_id, message_id = campaign["messages"][1]
    token = await _click(http, tracker, settings, queue_id)
    page = client.with_key(None)

    # The browser asks first (a JSON POST from another origin), then posts.
    async with http.options(
        client.base + "/conversions",
        headers={
            **ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    ) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
        assert preflight.headers["Access-Control-Allow-Headers"].lower() == "content-type"
    body = {"token": token, "goal": "purchase", "value": "49.90", "currency": "eur"}
    reply = await page.post("/conversions", body, headers=ORIGIN)

    assert reply.status == 201, reply.body
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    made = reply.data
    assert made["id"].startswith("conv_")
    assert (made["message_id"], made["campaign_id"]) == (message_id, campaign["id"])
    assert (made["value"], made["value_minor"], made["currency"]) == ("49.90", 4990, "EUR")
    assert (made["source"], made["link_index"], made["livemode"]) == ("click", 0, False)
    assert abs(datetime.fromisoformat(made["clicked_at"]).timestamp() - time.time()) < 30

    # Its events, written in the conversion's own transaction, on the test-mode tenant row.
    row = await pool.fetchrow(
        "SELECT tenant_id, token_hash, xmin::text AS tx, row_to_json(c)::text AS whole"
        " FROM conversions c"
    )
    assert row["tenant_id"] == tenant_id
    assert token not in row["whole"] and row["token_hash"] != token.encode()
    events = await pool.fetch(
        "SELECT type, tenant_id, message_id, campaign_id, data, xmin::text AS tx FROM events"
        " WHERE type IN ('goal.converted', 'revenue.recorded') ORDER BY id"
    )
    assert [e["type"] for e in events] == ["goal.converted", "revenue.recorded"]
    for event in events:
        assert (event["tenant_id"], event["message_id"], event["campaign_id"]) == (
            tenant_id,
            queue_id,
            campaign["key"],
        )
        assert event["tx"] == row["tx"]
        data = event["data"]
        assert (data["goal"], data["value"], data["value_minor"], data["currency"]) == (
            "purchase",
            "49.90",
            4990,
            "EUR",
        )
        assert (data["conversion_id"], data["message_id"]) == (made["id"], message_id)
        assert data["campaign_id"] == campaign["id"]

    again = await page.post("/conversions", {**body, "goal": "upsell"}, headers=ORIGIN)
    assert_error(again, 409, "CONFLICT")
    assert again.headers["Access-Control-Allow-Origin"] == "*"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1

    # A test-mode object: listed for the test key, not for the live one.
    listed = (await client.get("/conversions")).data
    assert [c["id"] for c in listed["items"]] == [made["id"]]
    live = await client.get("/conversions", key=live_key)
    assert live.data["items"] == []


async def test_one_token_two_requests_at_once_make_one_conversion(
    client: Client,
    pool: asyncpg.Pool,
    tracker: Tracker,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> None:
    campaign = await _campaign(client, pool, count=1)
    token = await _click(http, tracker, settings, campaign["messages"][0][0])
    page = client.with_key(None)
    replies = await asyncio.gather(
        *(page.post("/conversions", {"token": token, "goal": "signup"}) for _ in range(4))
    )
    assert sorted(r.status for r in replies) == [201, 409, 409, 409]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    # No value: a goal, and no revenue.
    types = await pool.fetch("SELECT type FROM events WHERE type LIKE 'goal.%' OR type LIKE 'rev%'")
    assert [t["type"] for t in types] == ["goal.converted"]


async def test_a_secret_key_names_the_message(
    client: Client,
    pool: asyncpg.Pool,
    tracker: Tracker,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> None:
    campaign = await _campaign(client, pool)
    (_, first_id), (second, _) = campaign["messages"]
    reply = await client.post(
        "/conversions",
        {
            "message_id": first_id,
            "goal": "demo booked",
            "value": 1200,
            "currency": "JPY",
            "occurred_at": "2026-01-02T03:04:05Z",
            "metadata": {"order": "A-1", "lines": [1, 2]},
        },
    )
    assert reply.status == 201, reply.body
    made = reply.data
    assert (made["value"], made["value_minor"], made["currency"]) == ("1200", 1200, "JPY")
    assert (made["source"], made["link_index"], made["clicked_at"]) == ("api", None, None)
    assert made["occurred_at"].startswith("2026-01-02T03:04:05")
    assert made["metadata"] == {"order": "A-1", "lines": [1, 2]}
    assert "Access-Control-Allow-Origin" in reply.headers  # the route's, whoever calls it

    # With a value of zero, or none: a goal but no revenue.
    zero = await client.post("/conversions", {"message_id": first_id, "goal": "free", "value": 0})
    assert zero.data["value"] == "0.00" and zero.data["currency"] == "USD"
    none = await client.post("/conversions", {"message_id": first_id, "goal": "visit"})
    assert (none.data["value"], none.data["value_minor"], none.data["currency"]) == (
        None,
        None,
        None,
    )
    counts = dict(
        await pool.fetch(
            "SELECT type, count(*) FROM events WHERE type IN ('goal.converted',"
            " 'revenue.recorded') GROUP BY type"
        )
    )
    assert counts == {"goal.converted": 3, "revenue.recorded": 1}

    # A key may bring a click's token too: attributed to the click, used up all the same.
    token = await _click(http, tracker, settings, second)
    keyed = await client.post("/conversions", {"token": token, "goal": "purchase"})
    assert keyed.status == 201 and keyed.data["source"] == "click"
    assert_error(await client.post("/conversions", {"token": token, "goal": "x"}), 409, "CONFLICT")


async def test_who_may_report_what(
    client: Client,
    pool: asyncpg.Pool,
    tracker: Tracker,
    settings: Settings,
    http: aiohttp.ClientSession,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    campaign = await _campaign(client, pool)
    (queue_id, message_id), _ = campaign["messages"]
    body = {"message_id": message_id, "goal": "purchase"}
    anonymous = await client.post("/conversions", body, key=None)
    assert_error(anonymous, 401, "UNAUTHORIZED")
    assert anonymous.headers["Access-Control-Allow-Origin"] == "*"
    # A live key of the same account cannot name a test-mode message, nor its token.
    live = client.with_key(await make_key("acme"))
    assert_error(await live.post("/conversions", body), 404, "NOT_FOUND")
    token = await _click(http, tracker, settings, queue_id)
    assert_error(await live.post("/conversions", {"token": token, "goal": "x"}), 404, "NOT_FOUND")
    # Nor another account's key; publishable keys report nothing.
    other = client.with_key(await make_key("globex", tier="professional", test=True))
    assert_error(await other.post("/conversions", body), 404, "NOT_FOUND")
    publishable = (await client.post("/api-keys", json={"type": "publishable"})).data["key"]
    assert_error(await client.post("/conversions", body, key=publishable), 403, "FORBIDDEN")
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    # The token was not used up by the refusals.
    assert (
        await client.post("/conversions", {"token": token, "goal": "x"}, key=None)
    ).status == 201


async def test_bad_input_is_named(
    client: Client,
    pool: asyncpg.Pool,
    tracker: Tracker,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> None:
    campaign = await _campaign(client, pool, count=1)
    queue_id, message_id = campaign["messages"][0]
    token = await _click(http, tracker, settings, queue_id)
    signer = LinkSigner(server_keys(settings))
    old = conversions.issue(signer, queue_id, 0, time.time() - 31 * 86400)
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    # A changed character mid-token (the last ones may be spare base64 bits, so an edit there
    # can leave the token's bytes as they were).
    middle = len(token) // 2
    tampered = token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"goal": "x"}, "message_id"),
        ({"message_id": message_id, "token": token, "goal": "x"}, "message_id"),
        ({"message_id": "msg_nope", "goal": "x"}, "message_id"),
        ({"message_id": message_id, "goal": ""}, "goal"),
        ({"message_id": message_id, "goal": "a\nb"}, "goal"),
        ({"message_id": message_id, "goal": "x", "value": -1}, "value"),
        ({"message_id": message_id, "goal": "x", "value": "ten"}, "value"),
        ({"message_id": message_id, "goal": "x", "value": "1.5", "currency": "JPY"}, "value"),
        ({"message_id": message_id, "goal": "x", "value": "0.001"}, "value"),
        ({"message_id": message_id, "goal": "x", "value": "1e13"}, "value"),
        ({"message_id": message_id, "goal": "x", "value": 1, "currency": "ZZZ"}, "currency"),
        ({"message_id": message_id, "goal": "x", "currency": "dollars"}, "currency"),
        ({"message_id": message_id, "goal": "x", "occurred_at": soon}, "occurred_at"),
        ({"message_id": message_id, "goal": "x", "occurred_at": "2026-01-01"}, "occurred_at"),
        ({"message_id": message_id, "goal": "x", "metadata": {"a": "b" * 5000}}, "metadata"),
        ({"message_id": message_id, "goal": "x", "extra": 1}, "extra"),
        ({"token": tampered, "goal": "x"}, "token"),
        ({"token": old, "goal": "x"}, "token"),
        ({"token": signer.sign("click", queue_id, 0, SHOP), "goal": "x"}, "token"),
    ]
    for body, field in cases:
        error = assert_error(await client.post("/conversions", body), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (body, error)
    expired = await client.post("/conversions", {"token": old, "goal": "x"}, key=None)
    assert "expired" in assert_error(expired, 422, "VALIDATION_ERROR")["message"]
    unknown = {"message_id": "msg_" + "0" * 32, "goal": "x"}
    assert_error(await client.post("/conversions", unknown), 404, "NOT_FOUND")
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    # Still good after all that.
    assert (await client.post("/conversions", {"token": token, "goal": "x"})).status == 201


async def test_the_list_pages_newest_first_and_filters_by_campaign(
    client: Client, pool: asyncpg.Pool
) -> None:
    first = await _campaign(client, pool, count=1)
    second = await _campaign(client, pool, count=1)
    made = []
    for campaign in (first, second, first, second, first):
        reply = await client.post(
            "/conversions", {"message_id": campaign["messages"][0][1], "goal": "g"}
        )
        made.append(reply.data["id"])

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/conversions", params=params)).data
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert seen == made[::-1]

    only = await client.get("/conversions", params={"campaign_id": first["id"]})
    assert [c["id"] for c in only.data["items"]] == [made[4], made[2], made[0]]
    assert {c["campaign_id"] for c in only.data["items"]} == {first["id"]}
    assert "Access-Control-Allow-Origin" not in only.headers  # CORS is the POST's alone
    nobody = await client.get("/conversions", params={"campaign_id": "campaign_" + "0" * 32})
    assert nobody.data["items"] == []
    bad = await client.get("/conversions", params={"campaign_id": "7"})
    assert assert_error(bad, 422, "VALIDATION_ERROR")["details"][0]["field"] == "campaign_id"
    bad = await client.get("/conversions", params={"cursor": "nope"})
    assert_error(bad, 422, "VALIDATION_ERROR")


async def test_a_page_without_a_key_is_counted_against_the_message_s_tenant(
    pool: asyncpg.Pool,
    start_api: Callable[..., Awaitable[ApiServer]],
    http: aiohttp.ClientSession,
    key: str,
    tracker: Tracker,
    settings: Settings,
) -> None:
    # 1 request an hour for the free tier: 10 in test mode.
    api = await start_api(limits={"free": 1})
    client = Client(http, api.url + "/api/v1", key)
    campaign = await _campaign(client, pool, count=1)
    token = await _click(http, tracker, settings, campaign["messages"][0][0])
    page = client.with_key(None)
    statuses = [
        (await page.post("/conversions", {"token": token, "goal": "g"})).status for _ in range(11)
    ]
    assert statuses == [201] + [409] * 9 + [429]
    # Its own bucket: the tenant's key still has its budget (two requests of it spent above).
    assert (await client.get("/conversions")).status == 200
