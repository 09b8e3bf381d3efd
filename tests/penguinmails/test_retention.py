"""Retention: the webhook outbox partitioned by day (migrations 0038-0040), messages and
events by week (0042-0044), and `maintain`.

Each move to partitions is proved on a filled database: the scans that check the old rows
run while writes go on, and the swap itself reads no row and builds no index. Then a calendar
of 90 days of deliveries is pruned to the retention window in one run, keeping a day with a
delivery still pending; and 90 days of finished messages and their events, for three tenants
with their own retention, are pruned in one run that loses no queued message, no analytics
number and no suppression.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from penguinmails.config import RetentionSettings
from penguinmails.database import connect
from penguinmails.migrations import available
from penguinmails.retention import maintain, upper_bound
from tests.helpers import queue_messages, run_cli, size

FILLED = 200_000
# The queue the move of messages is proved on: 2,000,000 with PENGUINMAILS_RELIABILITY=full.
QUEUE = size(200_000, 2_000_000)
# Messages and events kept for a year: these tests prune the outbox alone.
OUTBOX_ONLY = RetentionSettings(webhook_deliveries_days=30, messages_days=365, events_days=365)


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


@contextlib.asynccontextmanager
async def _migrated_before(
    pg_server: Any, name: str, version: int
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """A database of its own migrated up to (not including) `version`, and two connections to
    it: one to apply the migrations, one to work beside them."""
    admin = await asyncpg.connect(pg_server.url())
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    url = pg_server.url(name)
    conn, other = await connect(url), await connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available():
            if migration.version < version:
                async with conn.transaction():
                    await _apply(conn, migration.version)
        yield conn, other
    finally:
        await conn.close()
        await other.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_the_move_to_partitions_holds_no_long_lock_on_a_filled_outbox(pg_server):
    async with _migrated_before(pg_server, "retention_fill", 38) as (conn, other):
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
        ahead = OUTBOX_ONLY.model_copy(update={"ahead_days": days})
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
        report = await maintain(conn, OUTBOX_ONLY, today=today)
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
        again = await maintain(conn, OUTBOX_ONLY, today=today)
    assert again.dropped == [] and again.created == [] and again.archived == 0

    code, out, err = await run_cli(database_url, tmp_path, "maintain")
    assert code == 0, err
    assert "created webhook_deliveries_" in out  # the days ahead of the real calendar
    assert "Traceback" not in err


@pytest.mark.slow
async def test_the_move_of_messages_and_events_holds_no_long_lock_on_a_filled_queue(pg_server):
    async with _migrated_before(pg_server, "retention_queue", 42) as (conn, other):
        tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('acme') RETURNING id")
        # Half delivered, half still queued; an event for each.
        await conn.execute(
            "INSERT INTO messages (tenant_id, message_id, from_email, recipient,"
            " recipient_domain, status)"
            " SELECT $1, 'm' || g || '@acme.test', 'news@acme.test', 'r' || g || '@dest.test',"
            " 'dest.test', CASE WHEN g % 2 = 0 THEN 'sent' ELSE 'queued' END"
            " FROM generate_series(1, $2) g",
            tenant,
            QUEUE,
        )
        await conn.execute(
            "INSERT INTO events (tenant_id, message_id, type)"
            " SELECT tenant_id, id, 'email.sent' FROM messages WHERE status = 'sent'"
        )
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE events")
        indexes = {
            table: set(
                await conn.fetchval(
                    "SELECT array_agg(indexrelid) FROM pg_index WHERE indrelid = $1::regclass",
                    table,
                )
            )
            for table in ("messages", "events")
        }

        async with conn.transaction():
            await _apply(conn, 42)  # a constant default and NOT VALID checks: no scan, no rewrite
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE done_on = 'infinity'") == QUEUE
        )

        # 0043's scans, left open: the queue is still claimed, finished and written meanwhile.
        async with conn.transaction():
            before = await _scans(conn, "messages")
            await _apply(conn, 43)
            assert await _scans(conn, "messages") > before  # the validations
            held = await other.fetch(
                "SELECT relation::regclass::text AS rel, mode FROM pg_locks WHERE pid = $1"
                " AND relation IN ('messages'::regclass, 'events'::regclass)",
                conn.get_server_pid(),
            )
            assert "AccessExclusiveLock" not in {r["mode"] for r in held}, held
            await other.execute("SET lock_timeout = '2s'")
            await other.execute(
                "UPDATE messages SET status = 'sending' WHERE id = (SELECT min(id) FROM messages"
                " WHERE status = 'queued')"
            )
            await other.execute(
                "INSERT INTO messages (tenant_id, message_id, from_email, recipient,"
                " recipient_domain) VALUES ($1, 'late@acme.test', 'news@acme.test',"
                " 'late@dest.test', 'dest.test')",
                tenant,
            )
            await other.execute(
                "INSERT INTO events (tenant_id, type) VALUES ($1, 'email.queued')", tenant
            )

        # 0044: the swap reads no row of the old tables and builds none of their indexes.
        async with conn.transaction():
            before = {t: await _scans(conn, t) for t in ("messages", "events")}
            started = time.monotonic()
            await _apply(conn, 44)
            swap_seconds = time.monotonic() - started
            assert await _scans(conn, "messages_live") == before["messages"]
            assert await _scans(conn, "events_legacy") == before["events"]
        assert swap_seconds < 2.0, swap_seconds
        for table, old in (("messages_live", "messages"), ("events_legacy", "events")):
            kept = set(
                await conn.fetchval(
                    "SELECT array_agg(indexrelid) FROM pg_index WHERE indrelid = $1::regclass",
                    table,
                )
            )
            assert indexes[old] <= kept, table  # the very same indexes, adopted

        assert await conn.fetchval("SELECT count(*) FROM messages") == QUEUE + 1
        assert await conn.fetchval("SELECT count(*) FROM events") == QUEUE // 2 + 1
        # New rows continue the ids; the queue is the live partition.
        new = await conn.fetchrow(
            "INSERT INTO messages (tenant_id, message_id, from_email, recipient,"
            " recipient_domain) VALUES ($1, 'new@acme.test', 'news@acme.test',"
            " 'new@dest.test', 'dest.test') RETURNING id, tableoid::regclass::text AS part",
            tenant,
        )
        assert new["id"] > QUEUE + 1 and new["part"] == "messages_live"
        # The first run archives the finished half, a batch at a time, and nothing else.
        report = await maintain(conn, RetentionSettings(archive_batch=30_000))
        assert report.archived == QUEUE // 2
        parts = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, status, count(*) AS n FROM messages"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
        week = datetime.now(UTC).date()
        week -= timedelta(days=week.weekday())
        assert [tuple(r) for r in parts] == [
            ("messages_live", "queued", QUEUE // 2 + 1),
            ("messages_live", "sending", 1),
            (f"messages_w{week:%Y%m%d}", "sent", QUEUE // 2),
        ]
        # Nothing unfinished may leave the live partition.
        try:
            await conn.execute(
                "UPDATE messages SET done_on = current_date WHERE id = $1", new["id"]
            )
        except asyncpg.CheckViolationError:
            pass
        else:
            raise AssertionError("a queued message left the live partition")


async def _finished_day(
    conn: asyncpg.Connection, tenant: int, campaign: int, day: date, count: int
) -> None:
    """`count` messages of `tenant` sent on `day`, each with its sent and opened events (which
    feed the campaign's rollups) and its engagement count, as the MTA and tracker make them."""
    noon = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
    await conn.execute(
        """WITH sent AS (
               INSERT INTO messages (tenant_id, campaign_id, message_id, from_email, recipient,
                                     recipient_domain, status, created_at, updated_at, sent_at)
               SELECT $1, $2, $3 || '-' || $1::bigint || '-' || g || '@acme.test', 'news@acme.test',
                      'r' || g || '@dest.test', 'dest.test', 'sent', $4, $4, $4
               FROM generate_series(1, $5) g
               RETURNING id, tenant_id, campaign_id
           ), counted AS (
               INSERT INTO engagement_counts (message_id, opens) SELECT id, 1 FROM sent
           )
           INSERT INTO events (tenant_id, message_id, campaign_id, type, created_at, is_unique)
           SELECT tenant_id, id, campaign_id, t, $4, true
           FROM sent CROSS JOIN unnest(ARRAY['email.sent', 'email.opened']) t""",
        tenant,
        campaign,
        f"{day:%Y%m%d}",
        noon,
        count,
    )


async def test_ninety_days_of_messages_and_events_expire_per_tenant_in_one_run(
    pool: asyncpg.Pool, database_url: str
):
    queued = await queue_messages(pool, ["a@dest.test", "b@dest.test"])
    acme = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", queued[0])
    await pool.execute(
        "UPDATE messages SET status = 'deferred', attempts = 3 WHERE id = $1", queued[1]
    )
    keeper = await pool.fetchval("INSERT INTO tenants (name) VALUES ('keeper') RETURNING id")
    brief = await pool.fetchval("INSERT INTO tenants (name) VALUES ('brief') RETURNING id")
    tenants = {acme: 45, keeper: 60, brief: 30}  # days of messages and events each keeps
    settings = RetentionSettings(
        webhook_deliveries_days=7,
        messages_days=45,
        events_days=45,
        tenants={
            "keeper": {"messages_days": 60, "events_days": 60},
            "brief": {"messages_days": 30, "events_days": 30},
        },
    )
    campaigns = {
        t: await pool.fetchval(
            "INSERT INTO campaigns (tenant_id, name, subject) VALUES ($1, 'c', 's') RETURNING id", t
        )
        for t in tenants
    }
    for t in tenants:
        await pool.execute(
            "INSERT INTO suppressions (tenant_id, email, reason, created_at)"
            " VALUES ($1, 'gone@dest.test', 'bounce', now() - interval '400 days')",
            t,
        )
    # 90 days of mail, each day's finished messages archived by that day's run (with a long
    # retention, so the database holds all 90 days when the real policy first runs).
    start = datetime.now(UTC).date()
    days, per_day = 90, 100
    hold_all = RetentionSettings(messages_days=365, events_days=365, ahead_days=7)
    async with pool.acquire() as conn:
        for n in range(days):
            day = start + timedelta(days=n)
            await maintain(conn, hold_all, today=day)  # the week of `day` exists
            for t in tenants:
                await _finished_day(conn, t, campaigns[t], day, per_day)
            report = await maintain(conn, hold_all, today=day)
            assert report.archived == per_day * len(tenants)
        stats_before = await conn.fetch("SELECT * FROM campaign_stats ORDER BY 1, 2, 3")
        assert stats_before
        assert await conn.fetchval("SELECT count(*) FROM messages") == days * per_day * 3 + 2

        today = start + timedelta(days=days)
        started = time.monotonic()
        report = await maintain(conn, settings, today=today)
        elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed

    def monday(day: date) -> date:
        return day - timedelta(days=day.weekday())

    weeks = sorted({monday(start + timedelta(days=n)) for n in range(days)})
    # A week goes whole once the longest retention (keeper's 60 days) is past its end; in the
    # weeks between, each tenant's rows go when its own retention is.
    dropped = {f"messages_w{w:%Y%m%d}" for w in weeks if w + timedelta(7) <= today - timedelta(60)}
    assert dropped and dropped <= set(report.dropped)
    assert "events_legacy" in report.dropped  # the weeks before partitioning, too
    left = await pool.fetch(
        "SELECT pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
    )
    uppers = [upper_bound(r["bound"]) for r in left]
    horizon = datetime.combine(today - timedelta(60), datetime.min.time(), UTC)
    assert all(u is None or u > horizon for u in uppers), uppers
    expected = {
        t: sum(
            per_day
            for n in range(days)
            if monday(start + timedelta(days=n)) + timedelta(7) > today - timedelta(keep)
        )
        for t, keep in tenants.items()
    }
    rows = {
        r["tenant_id"]: r["n"]
        for r in await pool.fetch(
            "SELECT tenant_id, count(*) AS n FROM messages WHERE status = 'sent' GROUP BY 1"
        )
    }
    assert rows == expected, (rows, expected)
    events = {
        r["tenant_id"]: r["n"]
        for r in await pool.fetch(
            "SELECT tenant_id, count(*) AS n FROM events WHERE message_id IS NOT NULL"
            " AND type = 'email.opened' GROUP BY 1"
        )
    }
    assert events == expected, (events, expected)
    # The per-message rows went with their messages, and only with them.
    assert await pool.fetchval("SELECT count(*) FROM engagement_counts") == sum(expected.values())
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM engagement_counts c"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = c.message_id)"
        )
        == 0
    )
    # Nothing queued or deferred was lost, no number changed, no suppression expired.
    statuses = await pool.fetch(
        "SELECT status FROM messages WHERE id = ANY($1) ORDER BY id", queued
    )
    assert [r["status"] for r in statuses] == ["queued", "deferred"]
    assert await pool.fetch("SELECT * FROM campaign_stats ORDER BY 1, 2, 3") == stats_before
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 3
    # A second run has nothing left to do.
    async with pool.acquire() as conn:
        again = await maintain(conn, settings, today=today)
    assert again.dropped == [] and again.deleted == {} and again.archived == 0
