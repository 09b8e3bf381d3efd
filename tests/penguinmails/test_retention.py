"""Retention: the webhook outbox partitioned by day (migrations 0038-0040) and `maintain`.

The move to partitions is proved on a filled outbox: the scan that checks the old rows runs
while writes go on, and the swap itself reads no row and builds no index. Then a calendar
of 90 days of deliveries is pruned to the retention window in one run, keeping a day with a
delivery still pending, and nothing else (queued messages, events, rollups, suppressions)
is touched.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import asyncpg

from penguinmails.config import RetentionSettings
from penguinmails.database import connect
from penguinmails.migrations import available
from penguinmails.retention import maintain
from tests.helpers import queue_messages, run_cli

FILLED = 200_000


async def _webhook(conn: asyncpg.Connection, tenant: int, *, active: bool) -> int:
    webhook: int = await conn.fetchval(
        "INSERT INTO webhooks (tenant_id, url, secret_sealed, active)"
        " VALUES ($1, 'https://hooks.test/in', '\\x00', $2) RETURNING id",
        tenant,
        active,
    )
    return webhook


async def _apply(conn: asyncpg.Connection, version: int) -> None:
    [migration] = [m for m in available() if m.version == version]
    await conn.execute(migration.sql)
    await conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        migration.version,
        migration.name,
    )


async def test_the_move_to_partitions_holds_no_long_lock_on_a_filled_outbox(pg_server):
    admin = await asyncpg.connect(pg_server.url())
    await admin.execute("DROP DATABASE IF EXISTS retention_fill")
    await admin.execute("CREATE DATABASE retention_fill")
    url = pg_server.url("retention_fill")
    conn, other = await connect(url), await connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available():
            if migration.version < 38:
                async with conn.transaction():
                    await _apply(conn, migration.version)
        tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('acme') RETURNING id")
        webhook = await _webhook(conn, tenant, active=False)
        await conn.execute(
            "INSERT INTO events (tenant_id, type) SELECT $1, 'email.sent'"
            " FROM generate_series(1, $2)",
            tenant,
            FILLED,
        )
        await conn.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_id, tenant_id, status)"
            " SELECT $1, id, $2, 'delivered' FROM events",
            webhook,
            tenant,
        )
        spare = await conn.fetchval(
            "INSERT INTO events (tenant_id, type) VALUES ($1, 'email.sent') RETURNING id", tenant
        )
        await conn.execute("VACUUM ANALYZE webhook_deliveries")
        indexes = {
            r["indexrelid"]
            for r in await conn.fetch(
                "SELECT indexrelid FROM pg_index WHERE indrelid = 'webhook_deliveries'::regclass"
            )
        }

        async with conn.transaction():
            await _apply(conn, 38)  # NOT VALID: no scan

        # 0039's scan, left open: the outbox is still written and updated meanwhile.
        async with conn.transaction():
            before = await _scans(conn, "webhook_deliveries")
            await _apply(conn, 39)
            assert await _scans(conn, "webhook_deliveries") == before + 1  # the validation
            held = await other.fetch(
                "SELECT mode FROM pg_locks WHERE pid = $1 AND relation = $2::regclass",
                conn.get_server_pid(),
                "webhook_deliveries",
            )
            assert "AccessExclusiveLock" not in {r["mode"] for r in held}, held
            await other.execute("SET lock_timeout = '2s'")
            await other.execute(
                "INSERT INTO webhook_deliveries (webhook_id, event_id, tenant_id)"
                " VALUES ($1, $2, $3)",
                webhook,
                spare,
                tenant,
            )
            await other.execute(
                "UPDATE webhook_deliveries SET attempts = 1 WHERE event_id = $1", spare
            )

        # 0040: the swap reads no row of the old table and builds none of its indexes.
        async with conn.transaction():
            before = await _scans(conn, "webhook_deliveries")
            started = time.monotonic()
            await _apply(conn, 40)
            swap_seconds = time.monotonic() - started
            assert await _scans(conn, "webhook_deliveries_legacy") == before
        assert swap_seconds < 2.0, swap_seconds
        kept = {
            r["indexrelid"]
            for r in await conn.fetch(
                "SELECT indexrelid FROM pg_index"
                " WHERE indrelid = 'webhook_deliveries_legacy'::regclass"
            )
        }
        assert indexes <= kept  # the very same indexes, adopted by the partitioned table

        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == FILLED + 1
        # New rows continue the ids and land in today's partition.
        await conn.execute("UPDATE webhooks SET active = true")
        await conn.execute("INSERT INTO events (tenant_id, type) VALUES ($1, 'email.sent')", tenant)
        row = await conn.fetchrow(
            "SELECT id, tableoid::regclass::text AS part FROM webhook_deliveries"
            " ORDER BY id DESC LIMIT 1"
        )
        assert row["id"] > FILLED + 1
        assert row["part"] in ("webhook_deliveries_legacy", _day_name(datetime.now(UTC).date()))
    finally:
        await conn.close()
        await other.close()
        await admin.execute("DROP DATABASE retention_fill WITH (FORCE)")
        await admin.close()


async def _scans(conn: asyncpg.Connection, table: str) -> int:
    """Sequential scans of `table` this backend has counted and not yet flushed to the
    statistics (this transaction's, and maybe a recent one's: compare before and after)."""
    value: int = await conn.fetchval("SELECT pg_stat_get_xact_numscans($1::regclass)", table)
    return value


def _day_name(day: date) -> str:
    return f"webhook_deliveries_{day:%Y%m%d}"


async def test_ninety_days_pruned_to_thirty_in_one_run_keeping_what_is_unfinished(
    pool: asyncpg.Pool, database_url: str, tmp_path
):
    queued = await queue_messages(pool, ["a@dest.test", "b@dest.test"])
    tenant = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", queued[0])
    stats_before = await pool.fetch("SELECT * FROM campaign_stats ORDER BY 1")
    # A suppression from long before the calendar: retention never expires one.
    await pool.execute(
        "INSERT INTO suppressions (tenant_id, email, reason, created_at)"
        " VALUES ($1, 'gone@dest.test', 'bounce', now() - interval '400 days')",
        tenant,
    )
    start = datetime.now(UTC).date() + timedelta(days=30)  # a calendar of our own, ahead
    days = 90
    async with pool.acquire() as conn:
        # The days of the calendar exist (as daily runs would have made them).
        ahead = RetentionSettings(webhook_deliveries_days=30, ahead_days=days)
        await maintain(conn, ahead, today=start)
        webhook = await _webhook(conn, tenant, active=False)
        per_day = 500
        await conn.execute(
            "INSERT INTO events (tenant_id, type) SELECT $1, 'email.sent'"
            " FROM generate_series(1, $2)",
            tenant,
            days * per_day,
        )
        # 500 delivered deliveries a day over 90 days; one still pending on day 5.
        await conn.execute(
            """INSERT INTO webhook_deliveries (webhook_id, event_id, tenant_id, status,
                                                created_at)
               SELECT $1, e.id, $2, 'delivered',
                      ($3::date + ((row_number() OVER (ORDER BY e.id) - 1) / $4)::int)
                          + time '12:00' AT TIME ZONE 'UTC'
               FROM events e WHERE e.message_id IS NULL AND e.tenant_id = $2
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)""",
            webhook,
            tenant,
            start,
            per_day,
        )
        pending_day = start + timedelta(days=5)
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending' WHERE id = ("
            " SELECT min(id) FROM webhook_deliveries WHERE created_at >= $1::date"
            " AND created_at < $1::date + 1)",
            pending_day,
        )
        total = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
        events = await conn.fetchval("SELECT count(*) FROM events")

        today = start + timedelta(days=days)
        started = time.monotonic()
        report = await maintain(conn, RetentionSettings(webhook_deliveries_days=30), today=today)
        elapsed = time.monotonic() - started

    horizon = today - timedelta(days=30)
    calendar = [start + timedelta(days=d) for d in range(days)]
    expired = [day for day in calendar if day < horizon]
    assert _day_name(pending_day) in report.kept
    assert set(report.dropped) >= {_day_name(d) for d in expired if d != pending_day}
    assert "webhook_deliveries_legacy" in report.dropped  # before the calendar, all delivered
    assert elapsed < 10, elapsed  # catalogue changes, whatever the rows
    left = await pool.fetchval("SELECT count(*) FROM webhook_deliveries")
    kept_rows = (days - len(expired) + 1) * per_day  # the window, and the pending day
    assert left == kept_rows, (left, kept_rows, total)
    assert (
        await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == 1
    )
    # Nothing but the outbox is touched: the queue, the events, the rollups.
    statuses = await pool.fetch("SELECT status FROM messages WHERE id = ANY($1)", queued)
    assert {r["status"] for r in statuses} == {"queued"}
    assert await pool.fetchval("SELECT count(*) FROM events") == events
    assert await pool.fetch("SELECT * FROM campaign_stats ORDER BY 1") == stats_before
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1
    # The days ahead exist; a second run finds nothing to do.
    async with pool.acquire() as conn:
        again = await maintain(conn, RetentionSettings(webhook_deliveries_days=30), today=today)
    assert again.dropped == [] and again.created == []

    code, out, err = await run_cli(database_url, tmp_path, "maintain")
    assert code == 0, err
    assert "created webhook_deliveries_" in out  # the days ahead of the real calendar
    assert "Traceback" not in err
