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


async def test_0016_renames_deliveries_and_records_what_was_queued(pg_server):
    """History written before email.sent meant "queued": a 250 becomes email.delivered, every
    message queued (but suppressed ones) gets its email.sent at its queueing time, the
    rollups follow, and no webhook goes out for any of it."""
    url = await _fresh_database(pg_server, "migrate_0016")
    conn = await connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available():
            if migration.version < 16:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('acme') RETURNING id")
        await conn.execute(
            "INSERT INTO webhooks (tenant_id, url, secret_sealed) VALUES ($1, 'https://h.test/',"
            " '\\x00')",
            tenant,
        )
        ids = [
            await conn.fetchval(
                "INSERT INTO messages (tenant_id, campaign_id, message_id, from_email, recipient,"
                " recipient_domain, status, created_at)"
                " VALUES ($1, 5, $2, 'a@acme.test', 'r@dest.test', 'dest.test', $3,"
                "         now() - interval '2 days') RETURNING id",
                tenant,
                f"{status}@acme.test",
                status,
            )
            for status in ("sent", "suppressed", "queued")
        ]
        await conn.execute(
            "INSERT INTO events (tenant_id, message_id, campaign_id, type, data, created_at,"
            " is_unique)"
            " VALUES ($1, $2, 5, 'email.sent', '{\"smtp_code\": 250}', now() - interval '1 day',"
            "         false),"
            "        ($1, $2, 5, 'email.opened', '{}', now() - interval '1 day', true)",
            tenant,
            ids[0],
        )
        deliveries = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
        assert deliveries == 2

        applied = await migrate(conn)  # 0016, and whatever came after it
        assert applied[0] == "0016_conversions.sql"

        events = await conn.fetch(
            "SELECT e.message_id, e.type, e.data, e.created_at = m.created_at AS when_queued"
            " FROM events e JOIN messages m ON m.id = e.message_id ORDER BY e.id"
        )
        assert [(e["message_id"], e["type"]) for e in events] == [
            (ids[0], "email.delivered"),
            (ids[0], "email.opened"),
            (ids[0], "email.sent"),
            (ids[2], "email.sent"),
        ]
        assert events[0]["data"] == {"smtp_code": 250}
        assert [e["when_queued"] for e in events[2:]] == [True, True]
        stats = dict(
            await conn.fetch(
                "SELECT type, sum(total) FROM campaign_stats WHERE campaign_id = 5 GROUP BY type"
            )
        )
        assert stats == {"email.delivered": 1, "email.opened": 1, "email.sent": 2}
        dimensions = await conn.fetch(
            "SELECT dimension, value, total, uniq FROM campaign_dimension_stats ORDER BY 1"
        )
        assert [tuple(d) for d in dimensions] == [
            ("country", "unknown", 1, 1),
            ("device", "unknown", 1, 1),
        ]
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == deliveries
        # The fan-out is back on for what comes next.
        await conn.execute(
            "INSERT INTO events (tenant_id, type) VALUES ($1, 'campaign.completed')", tenant
        )
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == deliveries + 1
    finally:
        await conn.close()
