"""`[database] replica_url`: searches and analytics read a real streaming replica, while
sends, single-message reads and everything the queue touches stay on the primary.

Pausing the standby's WAL replay makes the routing visible: a message sent meanwhile is on
the primary (its own page finds it) but not yet in the search, which reads the replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from api.server import REPLICA_ROUTES
from penguinmails.database import create_pool
from tests.helpers import Client, create_campaign, wait_for
from tests.replica import Replica


@pytest.fixture
async def reader(pg_server, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a streaming replica of the cluster that holds this test's database."""
    standby = await Replica(pg_server.socket_dir).start()
    pool = await create_pool(
        standby.url(urlsplit(database_url).path.lstrip("/")), min_size=1, max_size=4
    )
    try:
        yield pool
    finally:
        await pool.close()
        await standby.stop()


async def _send(client: Client, to: str) -> str:
    reply = await client.post(
        "/emails/send",
        json={
            "from": {"email": "hello@acme.test"},
            "to": to,
            "subject": "Hi",
            "content": {"text": "Hello"},
        },
    )
    assert reply.status == 202, reply.body
    return str(reply.data["message_id"])


async def _searched(client: Client, path: str = "/messages") -> set[str]:
    reply = await client.get(path, params={"limit": "100"})
    assert reply.status == 200, reply.body
    return {item.get("message_id") or item["id"] for item in reply.data["items"]}


async def test_searches_and_analytics_read_the_replica_writes_go_to_the_primary(
    reader: asyncpg.Pool, start_api, http: aiohttp.ClientSession, key: str
) -> None:
    assert await reader.fetchval("SELECT pg_is_in_recovery()")  # a real standby
    api = await start_api(reader=reader)
    client = Client(http, api.url + "/api/v1", key)
    first = await _send(client, "ann@dest.test")
    await wait_for(lambda: _has(client, first), timeout=20)  # replayed on the standby

    await reader.execute("SELECT pg_wal_replay_pause()")
    try:
        # A send while the standby stands still: it is written to the primary...
        second = await _send(client, "bob@dest.test")
        page = await client.get(f"/messages/{second}")
        assert page.status == 200 and page.data["id"] == second
        # ...and the searches, on the replica, do not see it yet.
        assert await _searched(client) == {first}
        assert second not in await _searched(client, "/events")
        # A campaign made a moment ago is found (on the primary); its numbers come from
        # the replica.
        campaign = await create_campaign(client)
        analytics = await client.get(f"/analytics/campaigns/{campaign['id']}")
        assert analytics.status == 200, analytics.body
        assert (await client.get("/analytics/tags/spring")).status == 200
    finally:
        await reader.execute("SELECT pg_wal_replay_resume()")
    await wait_for(lambda: _has(client, second), timeout=20)
    assert await _searched(client) == {first, second}
    assert REPLICA_ROUTES == (
        "GET /messages",
        "GET /events",
        "GET /analytics/campaigns/{id}",
        "GET /analytics/tags/{tag}",
    )


async def _has(client: Client, message: str) -> bool:
    return message in await _searched(client)


async def test_without_a_replica_the_searches_read_the_primary(
    start_api, http: aiohttp.ClientSession, key: str
) -> None:
    api = await start_api()
    client = Client(http, api.url + "/api/v1", key)
    sent = await _send(client, "ann@dest.test")
    assert await _searched(client) == {sent}  # at once: no replication delay
