"""Fixtures for the API: real servers on loopback (port 0) over this test's database.

`start_api` starts an API process-alike (one aiohttp site with its own app state) on the
shared pool; several may run at once, as several API processes would. `Client` speaks HTTP
to one and returns (status, headers, parsed body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from api.keys import create_key
from api.server import ApiServer
from penguinmails.config import Settings
from tests.helpers import Client


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(api={"listen": "127.0.0.1:0"}, webhooks={"allow_private_targets": True})


@pytest.fixture
async def start_api(
    pool: asyncpg.Pool, settings: Settings
) -> AsyncIterator[Callable[..., Awaitable[ApiServer]]]:
    started: list[ApiServer] = []

    async def start(custom: Settings | None = None, **options: Any) -> ApiServer:
        server = await ApiServer(pool, custom or settings, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def make_key(pool: asyncpg.Pool) -> Callable[..., Awaitable[str]]:
    async def make(tenant: str = "acme", *, tier: str | None = None, test: bool = False) -> str:
        async with pool.acquire() as conn:
            return await create_key(conn, tenant=tenant, tier=tier, test=test)

    return make


@pytest.fixture
async def api(
    start_api: Callable[..., Awaitable[ApiServer]], http: aiohttp.ClientSession
) -> ApiServer:
    return await start_api()


@pytest.fixture
async def key(make_key: Callable[..., Awaitable[str]]) -> str:
    return await make_key("acme", tier="enterprise", test=True)


@pytest.fixture
async def live_key(make_key: Callable[..., Awaitable[str]]) -> str:
    """A live-mode secret key of the same account as `key`."""
    return await make_key("acme")


@pytest.fixture
async def client(api: ApiServer, http: aiohttp.ClientSession, key: str) -> Client:
    return Client(http, api.url + "/api/v1", key)


@pytest.fixture
async def tenant_id(pool: asyncpg.Pool, key: str) -> int:
    """The tenant row `key` acts in (its mode's row: the account's test twin for a test key)."""
    value: int = await pool.fetchval("SELECT tenant_id FROM api_keys WHERE prefix = $1", key[:20])
    return value
