"""Single and bulk sends, Idempotency-Key, the sender rule, and a message's status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from api.server import ApiServer
from mta.domains import add_domain
from penguinmails.config import Settings
from tests.helpers import Client, assert_error, campaign_body, create_campaign, row_pk


def single(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "hello@acme.test", "name": "Acme"},
        "to": "ann@dest.test",
        "subject": "Hi {{name}}",
        "content": {"text": "Hello {{name}}", "html": "<p>Hello {{name}}</p>"},
        "personalization": {"name": "Ann"},
        "tracking": {"track_opens": True, "track_clicks": False},
    }
    body.update(changes)
    return body


async def test_send_one(client: Client, pool: asyncpg.Pool) -> None:
    reply = await client.post("/emails/send", json=single())
    assert reply.status == 202
    data = reply.data
    assert data["status"] == "queued" and data["sandbox"] is True
    row = await pool.fetchrow("SELECT * FROM messages WHERE public_id = $1", data["message_id"])
    assert row["recipient"] == "ann@dest.test" and row["status"] == "queued"
    # Opens asked for, and the tracking state of a message too short to carry the pixel.
    assert row["settings"]["track_opens"] is True and row["settings"]["track_clicks"] is False
    assert row["settings"]["open_pixel"] is False and row["settings"]["open_pixel_left_out"]
    message = await client.get(f"/messages/{data['message_id']}")
    assert message.data["tracking"] == {
        "opens": True,
        "clicks": False,
        "plain_text": False,
        "open_pixel": False,
        "open_pixel_left_out": row["settings"]["open_pixel_left_out"],
    }
    assert row["personalization"] == {"name": "Ann"} and row["sandbox"] is True

    status = (await client.get(f"/messages/{data['message_id']}")).data
    assert status["status"] == "queued" and status["attempts"] == 0
    assert status["recipient"] == "ann@dest.test"
    assert [e["type"] for e in status["events"]] == ["email.sent"]  # accepted and queued
    assert_error(
        await client.get("/messages/msg_0123456789abcdef0123456789abcdef"), 404, "NOT_FOUND"
    )


async def test_send_validation(client: Client) -> None:
    cases = {
        "to": single(to="not an address"),
        "content": single(content={}),
        "personalization": single(personalization={}),
        "subject": single(subject="Hi\nBcc: evil@x.test"),
        "from.email": single(**{"from": {"email": "bad"}}),
        "tracking.track_opens": single(tracking={"track_opens": "sometimes"}),
        "priority": single(priority="urgent"),
    }
    for field, body in cases.items():
        error = assert_error(await client.post("/emails/send", json=body), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"].startswith(field), (field, error)


async def test_idempotency_key(client: Client, pool: asyncpg.Pool) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/emails/send", json=single(), headers=headers)
    again = await client.post("/emails/send", json=single(), headers=headers)
    assert first.status == 202 and again.status == 202
    assert again.data == first.data and again.headers["Idempotent-Replayed"] == "true"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1
    other = await client.post("/emails/send", json=single(to="bob@dest.test"), headers=headers)
    assert_error(other, 409, "IDEMPOTENCY_CONFLICT")
    # A failed request stores nothing: the key can be used again.
    bad = await client.post("/emails/send", json=single(to="x"), headers={"Idempotency-Key": "k2"})
    assert bad.status == 422
    good = await client.post("/emails/send", json=single(), headers={"Idempotency-Key": "k2"})
    assert good.status == 202
    assert_error(
        await client.post("/emails/send", json=single(), headers={"Idempotency-Key": "é"}),
        422,
        "VALIDATION_ERROR",
    )


async def test_concurrent_requests_with_one_key_queue_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    headers = {"Idempotency-Key": "race"}
    replies = await asyncio.gather(
        *(client.post("/emails/send", json=single(), headers=headers) for _ in range(8))
    )
    assert {r.status for r in replies} == {202}
    assert len({r.data["message_id"] for r in replies}) == 1
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


# ---------------------------------------------------------------------------------------------
# The sender rule


@pytest.fixture
async def live(
    start_api: Callable[..., Awaitable[ApiServer]],
    http: Any,
    make_key: Callable[..., Awaitable[str]],
) -> Client:
    server = await start_api()
    return Client(http, server.url + "/api/v1", await make_key("acme"))


async def _domain(pool: asyncpg.Pool, settings: Settings, domain: str, tenant: str) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, domain, tenant=tenant)


async def test_live_sends_need_an_owned_domain(
    live: Client, pool: asyncpg.Pool, settings: Settings, make_key: Any
) -> None:
    error = assert_error(await live.post("/emails/send", json=single()), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "from.email"
    no_from = single()
    del no_from["from"]
    error = assert_error(await live.post("/emails/send", json=no_from), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "from"

    await _domain(pool, settings, "acme.test", "acme")
    await make_key("rival")
    await _domain(pool, settings, "rival.test", "rival")
    reply = await live.post("/emails/send", json=single())
    assert reply.status == 202 and reply.data["sandbox"] is False
    default = await live.post("/emails/send", json=no_from)
    row = await pool.fetchrow(
        "SELECT * FROM messages WHERE public_id = $1", default.data["message_id"]
    )
    assert row["from_email"] == "noreply@acme.test"
    for address in ("ceo@rival.test", "x@sub.acme.test", "x@elsewhere.test"):
        body = single(**{"from": {"email": address}})
        error = assert_error(await live.post("/emails/send", json=body), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == "from.email"
        assert "acme.test" in error["details"][0]["message"]


async def test_test_keys_may_not_use_another_tenants_domain(
    client: Client, pool: asyncpg.Pool, settings: Settings, make_key: Any
) -> None:
    await make_key("rival")
    await _domain(pool, settings, "rival.test", "rival")
    body = single(**{"from": {"email": "ceo@rival.test"}})
    assert_error(await client.post("/emails/send", json=body), 422, "VALIDATION_ERROR")


# ---------------------------------------------------------------------------------------------
# Bulk


def recipients(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"email": f"r{i}@dest{i % 50}.test", "personalization": {"first_name": f"R{i}"}}
        for i in range(start, start + count)
    ]


async def test_a_send_is_transactional_unless_it_says_bulk_and_campaigns_are_bulk(
    client: Client, pool: asyncpg.Pool
) -> None:
    plain = (await client.post("/emails/send", json=single())).data["message_id"]
    bulk = (await client.post("/emails/send", json=single(priority="bulk"))).data["message_id"]
    made = await create_campaign(client, recipients=[])
    sent = await client.post(
        "/emails/send-bulk", json={"campaign_id": made["id"], "recipients": recipients(2)}
    )
    priorities = await pool.fetch(
        "SELECT public_id, priority FROM messages WHERE public_id = ANY($1)",
        [plain, bulk, *sent.data["message_ids"]],
    )
    assert {r["public_id"]: r["priority"] for r in priorities} == {
        plain: 0,
        bulk: 1,
        **{m: 1 for m in sent.data["message_ids"]},
    }


async def test_bulk_10000_in_one_transaction(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client, recipients=[])
    reply = await client.post(
        "/emails/send-bulk", json={"campaign_id": made["id"], "recipients": recipients(10_000)}
    )
    assert reply.status == 202, reply.body
    data = reply.data
    assert data["queued"] == 10_000 and data["batches"] == 1 and len(data["message_ids"]) == 10_000
    rows = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT xmin::text) AS transactions,"
        " min(next_attempt_at) AS lo, max(next_attempt_at) AS hi"
        " FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert rows["n"] == 10_000 and rows["transactions"] == 1 and rows["lo"] == rows["hi"]
    campaign = (await client.get(f"/campaigns/{made['id']}")).data
    assert campaign["status"] == "sending" and campaign["recipient_count"] == 10_000


async def test_bulk_batches_become_due_apart(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client, recipients=[])
    reply = await client.post(
        "/emails/send-bulk",
        json={
            "campaign_id": made["id"],
            "recipients": recipients(25),
            "batch_size": 10,
            "delay_between_batches": 60,
        },
    )
    assert reply.data["batches"] == 3
    rows = await pool.fetch(
        "SELECT next_attempt_at, count(*) AS n FROM messages WHERE campaign_id = $1"
        " GROUP BY 1 ORDER BY 1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert [r["n"] for r in rows] == [10, 10, 5]
    assert rows[1]["next_attempt_at"] - rows[0]["next_attempt_at"] == timedelta(seconds=60)
    assert rows[2]["next_attempt_at"] - rows[0]["next_attempt_at"] == timedelta(seconds=120)
    assert await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM messages") == 1


async def test_bulk_reports_invalid_rows_by_index_and_queues_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await create_campaign(client, recipients=[])
    rows = recipients(300)
    rows[7]["email"] = "broken"
    rows[123]["personalization"] = {}
    reply = await client.post(
        "/emails/send-bulk", json={"campaign_id": made["id"], "recipients": rows}
    )
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    fields = [d["field"] for d in error["details"]]
    assert fields == ["recipients[7].email", "recipients[123].personalization"]
    assert "2 of 300" in error["message"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_bulk_limits_and_states(client: Client) -> None:
    made = await create_campaign(client, recipients=[])
    too_many = {"campaign_id": made["id"], "recipients": recipients(10_001)}
    error = assert_error(
        await client.post("/emails/send-bulk", json=too_many), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "recipients"
    empty = {"campaign_id": made["id"], "recipients": []}
    assert_error(await client.post("/emails/send-bulk", json=empty), 422, "VALIDATION_ERROR")
    missing = {
        "campaign_id": "campaign_0123456789abcdef0123456789abcdef",
        "recipients": recipients(1),
    }
    assert_error(await client.post("/emails/send-bulk", json=missing), 404, "NOT_FOUND")
    await client.post(f"/campaigns/{made['id']}/cancel")
    body = {"campaign_id": made["id"], "recipients": recipients(1)}
    assert_error(await client.post("/emails/send-bulk", json=body), 409, "CONFLICT")


async def test_bulk_idempotency(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client, recipients=[])
    body = {"campaign_id": made["id"], "recipients": recipients(50)}
    headers = {"Idempotency-Key": "bulk-1"}
    first = await client.post("/emails/send-bulk", json=body, headers=headers)
    second = await client.post("/emails/send-bulk", json=body, headers=headers)
    assert first.data == second.data
    assert await pool.fetchval("SELECT count(*) FROM messages") == 50


async def test_a_campaign_may_choose_one_of_the_server_s_egress_pools(
    start_api: Callable[..., Awaitable[ApiServer]],
    make_settings: Callable[..., Settings],
    key: str,
    http: Any,
    pool: asyncpg.Pool,
) -> None:
    settings = make_settings(
        mta={
            "sources": {"ip2": {"address": "127.0.0.2"}},
            "pools": {"dedicated": {"sources": {"ip2": 1}}},
        }
    )
    api = await start_api(settings)
    client = Client(http, api.url + "/api/v1", key)
    error = assert_error(
        await client.post("/campaigns", json=campaign_body(settings={"egress_pool": "nope"})),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "settings.egress_pool"
    made = await create_campaign(client, settings={"egress_pool": "dedicated"})
    assert made["settings"]["egress_pool"] == "dedicated"
    sent = await client.post(
        "/emails/send-bulk", json={"campaign_id": made["id"], "recipients": recipients(2)}
    )
    stored = await pool.fetch(
        "SELECT settings FROM messages WHERE public_id = ANY($1)", sent.data["message_ids"]
    )
    assert [r["settings"]["egress_pool"] for r in stored] == ["dedicated", "dedicated"]


async def test_a_send_without_to_is_refused_naming_it(client: Client, pool: asyncpg.Pool) -> None:
    body = single()
    del body["to"]
    error = assert_error(await client.post("/emails/send", json=body), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "to"
    empty = assert_error(
        await client.post("/emails/send", json=single(to=[])), 422, "VALIDATION_ERROR"
    )
    assert empty["details"][0]["field"] == "to"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
