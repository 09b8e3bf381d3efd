"""Schema migrations: numbered .sql files applied in order, once, under an advisory lock.

Each file runs in its own transaction together with its bookkeeping row, so a failed
migration leaves nothing behind. The advisory lock serialises concurrent `migrate` runs
(two hosts deploying at once): the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# An arbitrary constant shared by every PenguinMails process: "the migration lock".
MIGRATION_LOCK_KEY = 0x50454E47  # "PENG"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = resources.files("penguinmails") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {folder}")
    return found


async def applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    done = await applied(conn)
    return [m for m in available() if m.version not in done]


async def migrate(conn: asyncpg.Connection, *, session_lock: bool = True) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date).

    `session_lock=False` is for a connection through a transaction pooler, where a session
    advisory lock would be held by whichever server session ran it and never released:
    each migration's own transaction takes the lock instead and checks again, under it,
    that no other run applied the migration meanwhile.
    """
    if not session_lock:
        return await _migrate_in_transactions(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_BOOKKEEPING)
        names = []
        for migration in await pending(conn):
            async with conn.transaction():
                await _apply(conn, migration)
            names.append(migration.name)
        return names
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


_BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
                      version integer PRIMARY KEY,
                      name text NOT NULL,
                      applied_at timestamptz NOT NULL DEFAULT now())"""


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(migration.sql)
    await conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        migration.version,
        migration.name,
    )
    log.info("applied migration", extra={"action": "migrate", "migration": migration.name})


async def _migrate_in_transactions(conn: asyncpg.Connection) -> list[str]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
    names = []
    for migration in await pending(conn):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            if migration.version in await applied(conn):
                continue  # another run applied it while this one waited for the lock
            await _apply(conn, migration)
        names.append(migration.name)
    return names
