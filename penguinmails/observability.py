"""The one health check every role serves, and the ops app that carries `/metrics`.

Health means "can do its job": the database answers within HEALTH_TIMEOUT. Health endpoints
are probed by load balancers and sit on public listeners, so they answer up or down and
never why (a driver's error text names hosts, users and databases); the reason goes to the
process log.

Metrics are served only on each role's own `metrics_listen` (loopback by default), never on a
public listener: they tell anyone who can read them the traffic, queue depths and error rates.
They come from the role's own prometheus-client registry, refreshed (queue depth and the
like) on scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from penguinmails.config import split_hostport
from penguinmails.database import DATABASE_ERRORS

log = logging.getLogger(__name__)

Refresh = Callable[[], Awaitable[None]]

HEALTH_TIMEOUT = 2.0  # seconds for a connection and `SELECT 1`, whichever role asks
REFRESH_TIMEOUT = 2.0  # seconds for a scrape's refresh queries
# While the database stays down for the same reason, say so this often at most: a probe
# every second (or anyone calling /healthz in a loop) must not flood the log.
LOG_INTERVAL = 60.0


class DatabaseHealth:
    """Whether the role's database answers; one per served app, so its log lines say whose."""

    def __init__(
        self, pool: asyncpg.Pool, role: str | None = None, timeout: float = HEALTH_TIMEOUT
    ) -> None:
        self.pool = pool
        self.role = role
        self.timeout = timeout
        self._logged: tuple[str, float] | None = None  # reason last logged, and when

    async def ok(self) -> bool:
        # The timeout covers waiting for a free connection too: a pool that stays exhausted
        # is as unable to do the role's work as a database that does not answer.
        try:
            async with asyncio.timeout(self.timeout):
                await self.pool.fetchval("SELECT 1")
        except DATABASE_ERRORS as exc:
            self._report(_reason(exc, self.timeout))
            return False
        if self._logged is not None:
            self._logged = None
            log.info("database answers again", extra={"action": "health", "role": self.role})
        return True

    def _report(self, reason: str) -> None:
        now = time.monotonic()
        if self._logged is not None:
            last, at = self._logged
            if last == reason and now - at < LOG_INTERVAL:
                return
        self._logged = (reason, now)
        log.warning(
            "health check failed: database unavailable",
            extra={"action": "health", "role": self.role, "error": reason},
        )


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no connection or no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


HEALTH = web.AppKey("health", DatabaseHealth)


async def healthz(request: web.Request) -> web.Response:
    """`/healthz` for any app that carries a DatabaseHealth under HEALTH."""
    if await request.app[HEALTH].ok():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable"}, status=503)


def ops_app(
    pool: asyncpg.Pool,
    registry: CollectorRegistry,
    refresh: Refresh | None = None,
    *,
    role: str | None = None,
    health: DatabaseHealth | None = None,
) -> web.Application:
    """`/metrics` and `/healthz` for a role's metrics address; `health` shares the role's
    public check (and so its log throttling) where it has one."""

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await asyncio.wait_for(refresh(), REFRESH_TIMEOUT)
            except DATABASE_ERRORS:
                pass  # serve what we have; /healthz reports the database
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app[HEALTH] = health or DatabaseHealth(pool, role)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_ops_server(app: web.Application, listen: str) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_hostport(listen)
    await web.TCPSite(runner, host, port).start()
    return runner


def runner_url(runner: web.AppRunner) -> str:
    """Where a started runner listens, with the real port where 0 was asked for."""
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(app: web.Application, listen: str) -> AsyncIterator[str | None]:
    """Serve `app` on `listen` for the block, yielding its URL; nothing when `listen` is
    empty (metrics switched off)."""
    if not listen:
        yield None
        return
    runner = await start_ops_server(app, listen)
    try:
        yield runner_url(runner)
    finally:
        await runner.cleanup()
