"""The MTA's every database call on the messages queue (SQL in queries.sql)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from mta.outcomes import Outcome
from penguinmails.queries import load

SQL = load("mta")
CHANNEL = "penguinmails_queue"


@dataclass(frozen=True)
class Result:
    """An outcome for one leased message, ready to be written."""

    id: int
    lease_token: UUID
    outcome: Outcome


async def claim(
    conn: asyncpg.Pool | asyncpg.Connection, limit: int, owner: str, lease_seconds: float
) -> list[asyncpg.Record]:
    """Up to `limit` messages leased to `owner`, in one statement: those sent through a sending
    identity first (within its caps), then the rest, shared fairly between tenants."""
    rows: list[asyncpg.Record] = await conn.fetch(SQL["claim_batch"], limit, owner, lease_seconds)
    return rows


async def attachment_contents(
    conn: asyncpg.Pool | asyncpg.Connection, rows: Sequence[Mapping[str, Any]]
) -> dict[int, bytes]:
    """The bytes of the attachments `rows` carry, by id (empty, and no query, for none)."""
    ids = {ref["id"] for row in rows for ref in row["attachments"] or ()}
    if not ids:
        return {}
    found = await conn.fetch(SQL["attachment_contents"], list(ids))
    return {r["id"]: r["content"] for r in found}


async def extend_leases(
    conn: asyncpg.Pool | asyncpg.Connection, owner: str, lease_seconds: float
) -> None:
    await conn.execute(SQL["extend_leases"], owner, lease_seconds)


async def record(conn: asyncpg.Pool | asyncpg.Connection, results: Sequence[Result]) -> set[int]:
    """Write outcomes; returns the ids written (a lease lost to another worker is skipped)."""
    columns: list[list[Any]] = [[] for _ in range(11)]
    for r in results:
        o = r.outcome
        reply = o.reply
        values = (
            r.id,
            r.lease_token,
            o.status,
            o.attempted,
            o.next_attempt_at,
            reply.code if reply else None,
            str(reply.message) if reply else None,
            reply.enhanced if reply else None,
            o.event_type,
            o.data,
            o.suppress,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = await conn.fetch(SQL["record_outcomes"], *columns)
    return {row["id"] for row in rows}


async def release(
    conn: asyncpg.Pool | asyncpg.Connection,
    leases: Sequence[tuple[int, UUID]],
    due_at: datetime,
    *,
    possible_duplicate: bool = False,
) -> None:
    if not leases:
        return
    await conn.execute(
        SQL["release"],
        [i for i, _ in leases],
        [t for _, t in leases],
        due_at,
        possible_duplicate,
    )
