"""The queue's numbers as `penguinmails status` prints them and the dashboard's system page
shows them: one set of named queries (sql/queries.sql), read in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

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


async def queue_status(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    domains: int = 20,
    reasons: int = 10,
    paused: int = 50,
) -> QueueStatus:
    fetch: Any = conn
    return QueueStatus(
        totals=await fetch.fetch(SQL["status_totals"]),
        depth=await fetch.fetch(SQL["queue_depth"], domains),
        oldest=await fetch.fetchrow(SQL["oldest_deferred"]),
        reasons=await fetch.fetch(SQL["deferral_reasons"], reasons),
        webhooks=await fetch.fetchrow(SQL["webhook_backlog_summary"]),
        paused=await fetch.fetch(SQL["paused_sending"], paused),
    )
