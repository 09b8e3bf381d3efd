"""`/healthz` and `/metrics` for the roles that have no HTTP server of their own (the MTA,
inbound), and the database check every role's health endpoint shares.

Health means "can do its job": the database answers within a bound. Metrics come from the
role's own prometheus-client registry, refreshed (queue depth and the like) on scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from penguinmails.config import split_hostport
from penguinmails.database import DATABASE_ERRORS

Refresh = Callable[[], Awaitable[None]]


async def database_problem(pool: asyncpg.Pool, timeout: float = 2.0) -> str | None:
    """None when the database answers `SELECT 1` in time; else what went wrong."""
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)
    except DATABASE_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return None


def ops_app(
    pool: asyncpg.Pool, registry: CollectorRegistry, refresh: Refresh | None = None
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        problem = await database_problem(pool)
        if problem is not None:
            return web.json_response({"status": "unavailable", "database": problem}, status=503)
        return web.json_response({"status": "ok", "database": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await asyncio.wait_for(refresh(), 2.0)
            except DATABASE_ERRORS:
                pass  # serve what we have; /healthz reports the database
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_ops_server(app: web.Application, listen: str) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_hostport(listen)
    await web.TCPSite(runner, host, port).start()
    return runner
