"""Fixtures for the API: real servers on loopback (port 0) over this test's database.

`start_api` starts an API process-alike (one aiohttp site with its own app state) on the
shared pool; several may run at once, as several API processes would. `Client` speaks HTTP
to one and returns (status, headers, parsed body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from api.keys import create_key
from api.server import ApiServer
from penguinmails.config import Settings
from tests.tracker.conftest import Receiver


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


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any

    @property
    def data(self) -> Any:
        assert self.body["success"] is True, self.body
        return self.body["data"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.body["success"] is False, self.body
        return self.body["error"]


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session = session
        self.base = base
        self.key = key

    def with_key(self, key: str | None) -> Client:
        return Client(self.session, self.base, key)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = "default",
        params: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        token = self.key if key == "default" else key
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if json is not None:
            try:
                data = orjson.dumps(json)
            except TypeError:  # integers past 64 bits: the fuzz test sends them on purpose
                import json as stdlib_json

                data = stdlib_json.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, params=params
        ) as response:
            raw = await response.read()
            body = orjson.loads(raw) if raw else None
            return Reply(response.status, response.headers, body)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("PATCH", path, json, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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
    return await make_key("acme", test=True)


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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback (the tracker tests' own, reused)."""
    server = await Receiver().start()
    yield server
    await server.down()
