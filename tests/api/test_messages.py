"""Message search, the event log, and cancelling or rescheduling one message, over HTTP;
the indexes that keep every filter off a sequential scan of messages and events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from api.messages import SQL, id_bound
from mta.domains import add_domain
from mta.queue import claim
from penguinmails.config import Settings
from tests.helpers import Client, assert_error, create_campaign, row_pk


def single(to: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "hello@acme.test", "name": "Acme"},
        "to": to,
        "subject": f"Hi {to}",
        "content": {"text": "Hello"},
    }
    body.update(changes)
    return body


async def send(client: Client, to: str, **changes: Any) -> str:
    reply = await client.post("/emails/send", json=single(to, **changes))
    assert reply.status == 202, reply.body
    return str(reply.data["message_id"])


async def every_page(client: Client, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Walk the cursor to the end, two at a time."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(path, params=query)).data
        assert len(page["items"]) <= 2
        items.extend(page["items"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return items
        cursor = page["next_cursor"]


async def ids(client: Client, path: str, **params: str) -> list[str]:
    return [item["id"] for item in await every_page(client, path, params)]


# -- GET /messages ------------------------------------------------------------------------------


async def test_search_filters_and_pages_newest_first(client: Client, pool: asyncpg.Pool) -> None:
    first = await send(client, "Zoe@Dest.test")
    second = await send(client, "yan@dest.test")
    third = await send(client, "zoe@dest.test")
    campaign = await create_campaign(client)
    assert (await client.post(f"/campaigns/{campaign['id']}/send")).status == 202
    in_campaign = await ids(client, "/messages", campaign_id=campaign["id"])
    assert len(in_campaign) == 2
    await pool.execute(
        "UPDATE messages SET tags = '{vip,spring}' WHERE public_id = ANY($1)", [first, third]
    )
    await pool.execute("UPDATE messages SET status = 'sent' WHERE public_id = $1", second)

    everything = await ids(client, "/messages")
    assert everything == sorted(everything, reverse=True)
    assert set(everything) == {first, second, third, *in_campaign}
    assert everything[-3:] == [third, second, first]  # creation order, newest first

    assert await ids(client, "/messages", recipient="ZOE@dest.TEST") == [third, first]
    assert await ids(client, "/messages", status="sent") == [second]
    assert await ids(client, "/messages", tag="vip") == [third, first]
    assert await ids(client, "/messages", tag="vip", recipient="zoe@dest.test") == [third, first]
    assert await ids(client, "/messages", tag="nobody") == []
    assert await ids(client, "/messages", status="queued", tag="spring") == [third, first]
    unknown = "campaign_0123456789abcdef0123456789abcdef"
    assert await ids(client, "/messages", campaign_id=unknown) == []

    page = (await client.get("/messages", params={"recipient": "yan@dest.test"})).data
    [item] = page["items"]
    assert item == {
        "id": second,
        "campaign_id": None,
        "recipient": "yan@dest.test",
        "subject": "Hi yan@dest.test",
        "status": "sent",
        "attempts": 0,
        "tags": [],
        "created_at": item["created_at"],
        "sent_at": None,
        "last_reply_code": None,
        "livemode": False,
    }
    campaign_item = (await client.get("/messages", params={"campaign_id": campaign["id"]})).data
    assert {i["campaign_id"] for i in campaign_item["items"]} == {campaign["id"]}


async def test_search_by_creation_time(client: Client, pool: asyncpg.Pool) -> None:
    made = []
    for n in range(3):
        made.append(await send(client, f"r{n}@dest.test"))
        await asyncio.sleep(0.05)  # each send is its own transaction: created_at differs
    created = {
        r["public_id"]: r["created_at"]
        for r in await pool.fetch("SELECT public_id, created_at FROM messages")
    }
    middle = created[made[1]].isoformat()
    assert await ids(client, "/messages", since=middle) == [made[2], made[1]]
    assert await ids(client, "/messages", until=middle) == [made[0]]
    assert await ids(client, "/messages", since=middle, until=created[made[2]].isoformat()) == [
        made[1]
    ]
    # A message whose transaction began long before its insert (created_at well before the
    # time in its public id) is still found by until, within UNTIL_MARGIN.
    await pool.execute(
        "UPDATE messages SET created_at = created_at - interval '10 minutes' WHERE public_id = $1",
        made[2],
    )
    assert await ids(client, "/messages", until=middle) == [made[2], made[0]]


async def test_search_takes_the_calendar_s_ends(client: Client) -> None:
    message = await send(client, "ann@dest.test")
    for path in ("/messages", "/events"):
        latest = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999Z"}
        assert message in {
            item.get("message_id", item["id"]) for item in await every_page(client, path, latest)
        }
        earliest = {"until": "0001-01-01T00:00:01Z"}
        assert await every_page(client, path, earliest) == []


async def test_search_refuses_bad_filters(client: Client) -> None:
    cases = {
        "status": {"status": "lost"},
        "campaign_id": {"campaign_id": "42"},
        "since": {"since": "2026-01-01T00:00:00"},  # no offset: ambiguous
        "until": {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        "tag": {"tag": "two words"},
        "cursor": {"cursor": "not-a-cursor"},
        "limit": {"limit": "0"},
    }
    for field, params in cases.items():
        error = assert_error(await client.get("/messages", params=params), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (field, error)


async def test_modes_and_tenants_see_only_their_own(
    client: Client,
    live_key: str,
    make_key: Callable[..., Awaitable[str]],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    test_message = await send(client, "ann@dest.test")
    live = client.with_key(live_key)
    await add_sending_domain(pool, settings)
    live_message = await send(live, "ann@dest.test")
    other = client.with_key(await make_key("globex", tier="enterprise", test=True))

    assert await ids(client, "/messages") == [test_message]
    assert await ids(live, "/messages") == [live_message]
    assert await ids(other, "/messages") == []
    assert await ids(client, "/events", message_id=live_message) == []
    assert {e["message_id"] for e in await every_page(client, "/events", {})} == {test_message}
    assert await ids(other, "/events") == []
    # Nor can they change another mode's or tenant's message.
    assert_error(await client.delete(f"/messages/{live_message}"), 404, "NOT_FOUND")
    assert_error(await other.delete(f"/messages/{test_message}"), 404, "NOT_FOUND")
    later = {"send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    assert_error(await other.patch(f"/messages/{test_message}", json=later), 404, "NOT_FOUND")


async def add_sending_domain(pool: asyncpg.Pool, settings: Settings) -> None:
    """A live send needs its From domain registered (the sender rule)."""
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")


# -- GET /events --------------------------------------------------------------------------------


async def test_event_log_filters_and_pages(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    message = await send(client, "ann@dest.test")
    other_message = await send(client, "bob@dest.test")
    campaign = await create_campaign(client)  # campaign.created
    campaign_pk = await row_pk(pool, "campaigns", campaign["id"])
    message_pk = await row_pk(pool, "messages", message)
    # Separate statements a moment apart: ids made in the same millisecond have no order.
    await pool.execute(
        """INSERT INTO events (tenant_id, message_id, type, data)
           VALUES ($1, $2, 'email.opened', '{"open_count": 1}')""",
        tenant_id,
        message_pk,
    )
    await asyncio.sleep(0.01)
    await pool.execute(
        """INSERT INTO events (tenant_id, campaign_id, type, data)
           VALUES ($1, $2, 'webhook.disabled',
                   '{"webhook_id": 7, "campaign_id": 9, "inbound_id": 3, "queue_id": 4,
                     "reason": "gone"}')""",
        tenant_id,
        campaign_pk,
    )

    log = await every_page(client, "/events", {})
    assert [e["id"] for e in log] == sorted((e["id"] for e in log), reverse=True)
    assert [e["type"] for e in log] == [
        "webhook.disabled",
        "email.opened",
        "campaign.created",
        "email.sent",
        "email.sent",
    ]
    disabled = log[0]
    assert disabled["data"] == {"reason": "gone"}  # integer row keys never shown
    assert disabled["campaign_id"] == campaign["id"] and disabled["message_id"] is None
    assert disabled["id"].startswith("evt_") and disabled["livemode"] is False
    assert set(disabled) == {"id", "type", "created_at", "message_id", "campaign_id", "data"} | {
        "livemode"
    }

    assert [e["type"] for e in await every_page(client, "/events", {"type": "email.*"})] == [
        "email.opened",
        "email.sent",
        "email.sent",
    ]
    assert len(await ids(client, "/events", type="email.sent")) == 2
    assert len(await ids(client, "/events", type="email")) == 0  # exact, not a prefix
    assert len(await ids(client, "/events", type="campaign.*")) == 1
    by_message = await every_page(client, "/events", {"message_id": message})
    assert [e["type"] for e in by_message] == ["email.opened", "email.sent"]
    assert {e["message_id"] for e in by_message} == {message}
    assert other_message not in {e["message_id"] for e in by_message}
    by_campaign = await every_page(client, "/events", {"campaign_id": campaign["id"]})
    assert [e["type"] for e in by_campaign] == ["webhook.disabled", "campaign.created"]
    middle = log[2]["created_at"]
    assert [e["type"] for e in await every_page(client, "/events", {"since": middle})] == [
        "webhook.disabled",
        "email.opened",
        "campaign.created",
    ]
    assert [e["type"] for e in await every_page(client, "/events", {"until": middle})] == [
        "email.sent",
        "email.sent",
    ]


async def test_a_message_s_events_show_no_integer_keys(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    """The inbound server records a bounce with its inbound_messages row's integer key."""
    message = await send(client, "ann@dest.test")
    await pool.execute(
        """INSERT INTO events (tenant_id, message_id, type, data)
           VALUES ($1, $2, 'email.bounced', '{"inbound_id": 12, "smtp_code": 550}')""",
        tenant_id,
        await row_pk(pool, "messages", message),
    )
    events = (await client.get(f"/messages/{message}")).data["events"]
    assert events[-1]["data"] == {"smtp_code": 550}
    [logged] = await every_page(client, "/events", {"type": "email.bounced"})
    assert logged["data"] == {"smtp_code": 550} and logged["message_id"] == message
    cancelled = (await client.delete(f"/messages/{message}")).data["events"]
    assert [e["data"] for e in cancelled if e["type"] == "email.bounced"] == [{"smtp_code": 550}]


async def test_event_log_refuses_bad_filters(client: Client) -> None:
    cases = {
        "type": {"type": "email.*.opened"},
        "message_id": {"message_id": "campaign_0123456789abcdef0123456789abcdef"},
        "campaign_id": {"campaign_id": "7"},
        "until": {"until": "yesterday"},
    }
    for field, params in cases.items():
        error = assert_error(await client.get("/events", params=params), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (field, error)


# -- DELETE /messages/{id} ----------------------------------------------------------------------


async def test_cancel_a_waiting_message(client: Client, pool: asyncpg.Pool) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    queued = await send(client, "ann@dest.test", send_at=later)
    reply = await client.delete(f"/messages/{queued}")
    assert reply.status == 200, reply.body
    assert reply.data["status"] == "cancelled" and reply.data["id"] == queued
    assert [e["type"] for e in reply.data["events"]] == ["email.sent", "email.cancelled"]
    assert reply.data["events"][-1]["data"] == {
        "recipient": "ann@dest.test",
        "reason": "cancelled through the API",
    }
    again = assert_error(await client.delete(f"/messages/{queued}"), 409, "CONFLICT")
    assert "already cancelled" in again["message"]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.cancelled'") == 1

    for status in ("deferred", "paused"):
        message = await send(client, f"{status}@dest.test")
        await pool.execute("UPDATE messages SET status = $2 WHERE public_id = $1", message, status)
        assert (await client.delete(f"/messages/{message}")).data["status"] == "cancelled"
    for status in ("sending", "sent", "bounced", "failed", "suppressed"):
        message = await send(client, f"{status}@dest.test")
        await pool.execute("UPDATE messages SET status = $2 WHERE public_id = $1", message, status)
        error = assert_error(await client.delete(f"/messages/{message}"), 409, "CONFLICT")
        assert status in error["message"]
        assert (
            await pool.fetchval("SELECT status FROM messages WHERE public_id = $1", message)
            == status
        )
    missing = "msg_0123456789abcdef0123456789abcdef"
    assert_error(await client.delete(f"/messages/{missing}"), 404, "NOT_FOUND")
    assert_error(await client.delete("/messages/42"), 404, "NOT_FOUND")


async def test_cancelling_the_last_waiting_message_completes_its_campaign(
    client: Client, pool: asyncpg.Pool
) -> None:
    campaign = await create_campaign(client)
    await client.post(f"/campaigns/{campaign['id']}/send")
    first, second = await ids(client, "/messages", campaign_id=campaign["id"])
    await pool.execute("UPDATE messages SET status = 'sent' WHERE public_id = $1", first)
    assert (await client.get(f"/campaigns/{campaign['id']}")).data["status"] == "sending"
    assert (await client.delete(f"/messages/{second}")).status == 200
    assert (await client.get(f"/campaigns/{campaign['id']}")).data["status"] == "completed"
    completed = await every_page(client, "/events", {"type": "campaign.completed"})
    assert [e["campaign_id"] for e in completed] == [campaign["id"]]


async def test_the_mta_never_claims_a_cancelled_message(client: Client, pool: asyncpg.Pool) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    message = await send(client, "ann@dest.test", send_at=soon)
    assert (await client.delete(f"/messages/{message}")).status == 200
    # Its time comes (and goes): the claim still passes it by.
    await pool.execute(
        "UPDATE messages SET next_attempt_at = now() - interval '1 minute' WHERE public_id = $1",
        message,
    )
    assert await claim(pool, 100, "test-worker", 60.0) == []
    assert await pool.fetchval("SELECT status FROM messages WHERE public_id = $1", message) == (
        "cancelled"
    )
    # The control: the same message, not cancelled, is claimed.
    other = await send(client, "bob@dest.test")
    assert [r["id"] for r in await claim(pool, 100, "test-worker", 60.0)] == [
        await row_pk(pool, "messages", other)
    ]


async def test_a_cancel_in_progress_keeps_the_claim_away(
    client: Client, pool: asyncpg.Pool
) -> None:
    """While the cancel holds the row, the claim skips it; after, it is cancelled."""
    message = await send(client, "ann@dest.test")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["lock_message"], await tenant_of(pool, message), message)
        assert await claim(pool, 100, "test-worker", 60.0) == []
        await conn.execute(SQL["cancel_message"], row["id"])
    assert await claim(pool, 100, "test-worker", 60.0) == []


async def tenant_of(pool: asyncpg.Pool, message: str) -> int:
    return int(await pool.fetchval("SELECT tenant_id FROM messages WHERE public_id = $1", message))


# -- PATCH /messages/{id} -----------------------------------------------------------------------


async def test_reschedule_a_waiting_message(client: Client, pool: asyncpg.Pool) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    message = await send(client, "ann@dest.test", send_at=later.isoformat())
    new_time = later + timedelta(days=1)
    reply = await client.patch(f"/messages/{message}", json={"send_at": new_time.isoformat()})
    assert reply.status == 200, reply.body
    assert datetime.fromisoformat(reply.data["next_attempt_at"]) == new_time
    assert reply.data["status"] == "queued"
    event = reply.data["events"][-1]
    assert event["type"] == "email.rescheduled"
    assert datetime.fromisoformat(event["data"]["send_at"]) == new_time
    assert abs(datetime.fromisoformat(event["data"]["previous_send_at"]) - later) < timedelta(
        milliseconds=1
    )

    deferred = await send(client, "bob@dest.test")
    await pool.execute("UPDATE messages SET status = 'deferred' WHERE public_id = $1", deferred)
    moved = await client.patch(f"/messages/{deferred}", json={"send_at": new_time.isoformat()})
    assert moved.data["status"] == "deferred"
    assert datetime.fromisoformat(moved.data["next_attempt_at"]) == new_time


async def test_reschedule_refusals(client: Client, pool: asyncpg.Pool) -> None:
    later = {"send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    due = await send(client, "ann@dest.test")  # queued, due now: the MTA may take it any moment
    error = assert_error(await client.patch(f"/messages/{due}", json=later), 409, "CONFLICT")
    assert "due" in error["message"]
    for status in ("sending", "sent", "cancelled", "paused"):
        message = await send(client, f"{status}@dest.test", send_at=later["send_at"])
        await pool.execute("UPDATE messages SET status = $2 WHERE public_id = $1", message, status)
        error = assert_error(
            await client.patch(f"/messages/{message}", json=later), 409, "CONFLICT"
        )
        assert status in error["message"]
    waiting = await send(client, "bob@dest.test", send_at=later["send_at"])
    for body, field in (
        ({"send_at": "2030-01-01T00:00:00"}, "send_at"),  # naive: which zone?
        ({"send_at": "soon"}, "send_at"),
        ({}, "send_at"),
        ({"send_at": later["send_at"], "status": "sent"}, "status"),
    ):
        error = assert_error(
            await client.patch(f"/messages/{waiting}", json=body), 422, "VALIDATION_ERROR"
        )
        assert error["details"][0]["field"] == field, (body, error)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.rescheduled'") == 0


# -- the plans ----------------------------------------------------------------------------------


def _walk(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


# The parameters' types, as the handlers bind them.
TYPES = {
    "search_messages": "bigint, text, int, text, text, text, text, timestamptz, timestamptz, "
    "text, text",
    "search_events": "bigint, text, int, text, text, text, text, text, timestamptz, "
    "timestamptz, text, text",
}


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


async def _plan(conn: asyncpg.Connection, name: str, *args: Any) -> list[dict[str, Any]]:
    """The plan of the query's sixth run as one prepared statement, as the API's pool reuses
    it: from then on Postgres may switch to a generic plan (one for any parameters, where
    `$4 IS NULL OR ...` cannot pick an index), and keeps a parameter-specific plan only
    while that is much cheaper. The sixth run is the one that decides."""
    statement = f"plan_{name}"
    await conn.execute(f"DEALLOCATE ALL; PREPARE {statement} ({TYPES[name]}) AS {SQL[name]}")
    values = ", ".join(_literal(a) for a in args)
    for _ in range(6):
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {statement} ({values})")
    parsed = orjson.loads(raw) if isinstance(raw, str) else raw
    return _walk(parsed[0]["Plan"])


def _indexes(nodes: list[dict[str, Any]], table: str) -> set[str]:
    """The indexes of `table` the plan reads (a Bitmap Index Scan names no table: by prefix)."""
    return {
        n["Index Name"]
        for n in nodes
        if "Index Name" in n and n["Index Name"].startswith(table + "_")
    }


def _seq_scans(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}


ROWS = 50_000


async def _fill(pool: asyncpg.Pool) -> tuple[int, str, str, str]:
    """50,000 messages (and twice as many events) of one tenant beside another's: the shape
    of a busy tenant, mostly sent, a few hundred recipients, tags and campaigns."""
    tenant, other = [
        await pool.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id", name)
        for name in ("plan", "neighbour")
    ]
    campaigns = await pool.fetch(
        """INSERT INTO campaigns (tenant_id, name, subject, status)
           SELECT $1, 'c' || g, 'Hello', 'sending' FROM generate_series(1, 100) g
           RETURNING id, public_id""",
        tenant,
    )
    for owner in (tenant, other):
        await pool.execute(
            """INSERT INTO messages (tenant_id, campaign_id, message_id, from_email, recipient,
                                     recipient_domain, status, tags)
               SELECT $1::bigint, CASE WHEN $1::bigint = $2::bigint THEN $3 + g % 100 END,
                      $1::bigint::text || '.' || g || '@plan.test', 'a@plan.test',
                      'r' || g % 500 || '@dest.test', 'dest.test',
                      CASE WHEN g % 1000 = 0 THEN 'queued' WHEN g % 97 = 0 THEN 'bounced'
                           ELSE 'sent' END,
                      ARRAY['t' || g % 200]
                      || CASE WHEN g % 5000 = 0 THEN ARRAY['rare'] ELSE '{}' END
               FROM generate_series(1, $4::int) g""",
            owner,
            tenant,
            min(r["id"] for r in campaigns),
            ROWS,
        )
    await pool.execute(
        """INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
           SELECT tenant_id, id, campaign_id, t.type, '{}'
           FROM messages,
                LATERAL (VALUES ('email.sent'),
                                (CASE WHEN id % 7 = 0 THEN 'email.opened'
                                      WHEN id % 997 = 0 THEN 'email.complained'
                                      ELSE 'email.delivered' END)) AS t (type)"""
    )
    await pool.execute(
        """INSERT INTO events (tenant_id, campaign_id, type, data)
           SELECT tenant_id, id, 'campaign.sent', '{}' FROM campaigns"""
    )
    await pool.execute("ANALYZE messages")
    await pool.execute("ANALYZE events")
    await pool.execute("ANALYZE campaigns")
    message = await pool.fetchval(
        "SELECT public_id FROM messages WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1", tenant
    )
    return tenant, campaigns[5]["public_id"], message, "t7"


async def test_every_search_filter_is_answered_from_an_index(pool: asyncpg.Pool) -> None:
    tenant, campaign, message, tag = await _fill(pool)
    now = datetime.now(UTC)
    since, until = now - timedelta(minutes=5), now - timedelta(hours=2)
    cursor = id_bound("msg", now)
    # (parameters after tenant, cursor, limit) -> the index that must answer.
    none = (None, None, None, None, None, None, None, None)
    message_cases: dict[str, tuple[tuple[Any, ...], str | set[str]]] = {
        "nothing": (none, "messages_public_id_idx"),
        "cursor": (none, "messages_public_id_idx"),
        "recipient": (("R7@dest.test", *none[1:]), "messages_recipient_search_idx"),
        "status": ((None, "bounced", *none[2:]), "messages_status_search_idx"),
        # Waiting messages are few (the queue drains): the claim's partial index finds them.
        "status queued": (
            (None, "queued", *none[2:]),
            {"messages_status_search_idx", "messages_due_idx"},
        ),
        "campaign": ((None, None, campaign, *none[3:]), "messages_campaign_search_idx"),
        "rare tag": ((None, None, None, "rare", *none[4:]), "messages_tags_idx"),
        # One message in 200: the newest 21 are close together in id order.
        "common tag": (
            (None, None, None, tag, *none[4:]),
            {"messages_tags_idx", "messages_public_id_idx"},
        ),
        "since": (
            (None, None, None, None, since, None, id_bound("msg", since), None),
            "messages_public_id_idx",
        ),
        "until": (
            (None, None, None, None, None, until, None, id_bound("msg", until, upper=True)),
            "messages_public_id_idx",
        ),
    }
    async with pool.acquire() as conn:
        for name, (filters, index) in message_cases.items():
            after = cursor if name == "cursor" else None
            nodes = await _plan(conn, "search_messages", tenant, after, 21, *filters)
            wanted = {index} if isinstance(index, str) else index
            assert wanted & _indexes(nodes, "messages"), (name, nodes[0])
            assert "messages" not in _seq_scans(nodes), (name, nodes[0])

        nothing = (None, None, None, None, None, None, None, None, None)
        event_cases = {
            "nothing": (nothing, "events_public_id_idx"),
            "rare type": (("email.complained", *nothing[1:]), "events_type_search_idx"),
            "rare prefix": (
                (None, "campaign.", "campaign/", *nothing[3:]),
                "events_type_search_idx",
            ),
            "common prefix": ((None, "email.", "email/", *nothing[3:]), None),
            "message": ((None, None, None, message, *nothing[4:]), "events_message_idx"),
            "campaign": (
                (None, None, None, None, campaign, *nothing[5:]),
                "events_campaign_search_idx",
            ),
            "since": (
                (None, None, None, None, None, since, None, id_bound("evt", since), None),
                "events_public_id_idx",
            ),
            "until": (
                (
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    until,
                    None,
                    id_bound("evt", until, upper=True),
                ),
                "events_public_id_idx",
            ),
        }
        for name, (filters, index) in event_cases.items():
            nodes = await _plan(conn, "search_events", tenant, None, 21, *filters)
            if index is not None:
                assert index in _indexes(nodes, "events"), (name, nodes[0])
            assert _indexes(nodes, "events"), (name, nodes[0])
            assert not _seq_scans(nodes) & {"events", "messages"}, (name, nodes[0])
