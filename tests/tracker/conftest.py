"""Fixtures for the tracker: sent messages to hit, a running tracker, a webhook receiver.

Everything is real: the tracker serves over loopback on port 0, and the receiver is an
aiohttp server that can be made to refuse connections, answer errors or stall, then recover.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from penguinmails.config import Settings
from penguinmails.links import Links
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.secrets import server_keys
from penguinmails.tokens import TokenSigner
from tracker.server import Tracker


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
    )


@pytest.fixture
def links(settings: Settings) -> Links:
    return Links(TokenSigner(server_keys(settings)), settings.tracker.base_url)


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> int:
    return await ensure_tenant(pool, "acme")


@pytest.fixture
def sent_messages(pool: asyncpg.Pool, tenant: int) -> Callable[..., Awaitable[list[int]]]:
    """Queue messages and mark them sent an hour ago (so hits are not 'too soon')."""

    async def make(
        count: int = 1,
        *,
        tenant_id: int | None = None,
        campaign_id: int | None = 7,
        sent_seconds_ago: float = 3600.0,
    ) -> list[int]:
        recipients = [f"reader{i}@dest.test" for i in range(count)]
        draft = Draft(
            from_email="news@acme.test",
            subject="Hi",
            recipients=recipients,
            html="<p>Hi</p>",
            campaign_id=campaign_id,
        )
        ids = await enqueue(pool, tenant_id or tenant, draft)
        await pool.execute(
            "UPDATE messages SET status = 'sent', sent_at = now() - make_interval(secs => $2)"
            " WHERE id = ANY($1)",
            ids,
            sent_seconds_ago,
        )
        return ids

    return make


@pytest.fixture
async def start_tracker(
    pool: asyncpg.Pool, settings: Settings
) -> AsyncIterator[Callable[..., Awaitable[Tracker]]]:
    started: list[Tracker] = []

    async def start(custom: Settings | None = None, **options: Any) -> Tracker:
        options.setdefault("dispatcher", {"poll_interval": 0.05})
        tracker = await Tracker(pool, custom or settings, **options).start()
        started.append(tracker)
        return tracker

    yield start
    for tracker in started:
        await tracker.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """A webhook receiver on loopback. `status`, `delay` and `down()` inject failures."""

    status: int = 200
    delay: float = 0.0
    status_for: dict[str, int] = field(default_factory=dict)  # by path, overriding `status`
    requests: list[Request] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/hook/{name}", self._hook)
        app.router.add_post("/redirect", self._redirect)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def down(self) -> None:
        """Stop listening: connections are refused until up()."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def up(self) -> None:
        await self.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.answered < 300]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            status = self.status_for.get(request.path, self.status)
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.concurrent -= 1
        self.requests.append(Request(request.path, dict(request.headers), body, status))
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def _redirect(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(Request(request.path, dict(request.headers), b"", 302))
        raise web.HTTPFound(self.url("/hook"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = await Receiver().start()
    yield server
    await server.down()


def verify(secret: str, request: Request) -> dict[str, Any]:
    """Check both signatures of a delivery; returns the payload.

    Standard Webhooks with the reference library (a whsec_ secret is passed as is; any other
    secret as its UTF-8 bytes, as the standard says), and the seed's plain HMAC header.
    """
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    payload: dict[str, Any] = Webhook(key).verify(request.body, request.headers)
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-PenguinMails-Signature"], f"sha256={expected}")
    return payload


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
