"""Migrations apply once, in order, and two hosts migrating at once is safe."""

from __future__ import annotations

import asyncio

import asyncpg

from penguinmails.database import connect
from penguinmails.migrations import available, migrate, pending


async def _fresh_database(pg_server, name: str) -> str:
    admin = await asyncpg.connect(pg_server.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return pg_server.url(name)


async def test_migrate_applies_everything_once_and_then_nothing(pg_server):
    url = await _fresh_database(pg_server, "migrate_once")
    conn = await connect(url)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        assert first == [m.name for m in available()]
        assert second == []
        assert await pending(conn) == []
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(available())
    finally:
        await conn.close()


async def test_two_concurrent_migrations_apply_each_file_once(pg_server):
    url = await _fresh_database(pg_server, "migrate_race")
    conns = [await connect(url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(name for names in results for name in names)
        assert applied == sorted(m.name for m in available())
    finally:
        for conn in conns:
            await conn.close()


async def test_migration_files_are_numbered_without_gaps():
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))
