"""The queue's numbers as `penguinmails status` prints them and the dashboard's system page
shows them: one set of named queries (sql/queries.sql), read in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from penguinmails.config import Settings
from penguinmails.queries import load

SQL = load("penguinmails", "sql/queries.sql")


@dataclass(frozen=True)
class QueueStatus:
    totals: list[asyncpg.Record]  # messages by status
    depth: list[asyncpg.Record]  # unfinished messages by status and destination domain
    oldest: asyncpg.Record | None  # the deferred message that has waited longest
    reasons: list[asyncpg.Record]  # deferrals grouped by reply
    webhooks: asyncpg.Record  # deliveries waiting, and the oldest
    paused: list[asyncpg.Record]  # campaigns, identities, domains and tenants paused
    sites: list[asyncpg.Record]  # unfinished messages by site (MX set) and provider
    held: list[asyncpg.Record]  # what the MTA's shaping rules hold now, and until when


async def queue_status(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    domains: int = 20,
    reasons: int = 10,
    paused: int = 50,
    sites: int = 20,
) -> QueueStatus:
    fetch: Any = conn
    return QueueStatus(
        totals=await fetch.fetch(SQL["status_totals"]),
        depth=await fetch.fetch(SQL["queue_depth"], domains),
        oldest=await fetch.fetchrow(SQL["oldest_deferred"]),
        reasons=await fetch.fetch(SQL["deferral_reasons"], reasons),
        webhooks=await fetch.fetchrow(SQL["webhook_backlog_summary"]),
        paused=await fetch.fetch(SQL["paused_sending"], paused),
        sites=await fetch.fetch(SQL["depth_by_site"], sites),
        held=await fetch.fetch(SQL["held_seconds"]),
    )


MTA_PRESENCE_SECONDS = 6.0  # three missed heartbeats of a worker (mta.worker), and it is gone


@dataclass(frozen=True)
class RoleHealth:
    role: str
    url: str | None  # the /healthz asked; None: the role serves none here (not configured)
    ok: bool | None  # None: not asked
    detail: str


def _healthz_url(listen: str) -> str | None:
    """A listen address's /healthz, a wildcard address asked on loopback; empty: none."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"http://{host}:{port}/healthz"


async def _ask(session: aiohttp.ClientSession, role: str, url: str | None) -> RoleHealth:
    if url is None:
        return RoleHealth(role, None, None, "no health address configured")
    try:
        async with session.get(url, allow_redirects=False) as response:
            ok = response.status == 200
            return RoleHealth(role, url, ok, "ok" if ok else f"HTTP {response.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return RoleHealth(role, url, False, f"no answer: {type(exc).__name__}")


async def role_health(settings: Settings, *, timeout: float = 2.0) -> list[RoleHealth]:
    """Each role's own /healthz (its database check) where its configuration says it serves
    one: the tracker's public listener, the MTA's and inbound's metrics addresses. The API is
    the caller. Asked at once, each within `timeout` seconds."""
    asks = {
        "tracker": _healthz_url(settings.tracker.listen),
        "mta": _healthz_url(settings.mta.metrics_listen),
        "inbound": _healthz_url(settings.inbound.metrics_listen),
    }
    limit = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limit) as session:
        answers = await asyncio.gather(*(_ask(session, r, u) for r, u in asks.items()))
    return list(answers)


async def mta_presence(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record:
    """How many MTA worker processes beat their presence lately, and the last beat."""
    fetch: Any = conn
    row: asyncpg.Record = await fetch.fetchrow(SQL["mta_presence"], MTA_PRESENCE_SECONDS)
    return row
