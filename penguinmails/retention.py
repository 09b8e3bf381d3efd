"""`penguinmails maintain`: partitions of what grows without bound, created ahead and dropped
past retention.

Today that is the webhook outbox (webhook_deliveries, partitioned by day of created_at since
migration 0040): each run creates the next `[retention] ahead_days` days and drops each day
older than `[retention] webhook_deliveries_days`, whole, once none of its rows is still
pending or being delivered (a delivery retried for days keeps its day). Dropping a day is a
catalogue change, not a DELETE of its rows: no vacuum debt, no index bloat, done in moments
however many rows it held.

Nothing else is dropped. Messages, events, suppressions and the analytics rollups are left
alone (docs/scaling.md says what partitioning `messages` and `events` would take), so no
queued or in-flight message and no analytics number can be lost to retention.

A run holds a transaction-scoped advisory lock per step, so two hosts' timers never work at
once (the second skips), and each drop waits at most `LOCK_TIMEOUT` for its brief exclusive
lock: a long query on the outbox makes it try again next run rather than queue every writer
behind it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from penguinmails.config import RetentionSettings
from penguinmails.queries import load

log = logging.getLogger(__name__)

SQL = load("penguinmails", "sql/retention.sql")
LOCK_TIMEOUT = "2s"
_DAY = re.compile(r"^webhook_deliveries_(\d{8})$")
_UPPER = re.compile(r"TO \('([^']+)'\)")


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # expired, but rows still to deliver
    skipped: bool = False  # another run held the lock
    default_rows: int = 0


def _upper_bound(bound: str) -> datetime | None:
    match = _UPPER.search(bound)
    return datetime.fromisoformat(match.group(1)) if match else None


async def maintain(
    conn: asyncpg.Connection, settings: RetentionSettings, today: date | None = None
) -> Report:
    """One maintenance run; `today` (UTC) is for tests that move the calendar."""
    today = today or datetime.now(UTC).date()
    report = Report()
    async with conn.transaction():
        if not await conn.fetchval(SQL["try_lock"]):
            report.skipped = True
            return report
        for offset in range(settings.ahead_days + 1):
            day = today + timedelta(days=offset)
            try:
                async with conn.transaction():  # a savepoint: one bad day spoils no other
                    if await conn.fetchval(SQL["add_day"], day):
                        report.created.append(f"webhook_deliveries_{day:%Y%m%d}")
            except asyncpg.CheckViolationError as exc:
                # The default partition holds rows of that day: they stay where they are.
                log.warning(
                    "cannot create a day of the webhook outbox",
                    extra={"action": "maintain", "day": str(day), "error": str(exc)},
                )
        partitions = await conn.fetch(SQL["partitions"])
        report.default_rows = await conn.fetchval(SQL["default_rows"])
    horizon = datetime.combine(
        today - timedelta(days=settings.webhook_deliveries_days), datetime.min.time(), UTC
    )
    for row in partitions:
        upper = _upper_bound(row["bound"])
        if upper is None or upper > horizon:
            continue  # the default partition, or not yet past retention
        await _drop(conn, row["name"], report)
    if report.default_rows:
        log.warning(
            "webhook deliveries outside any day's partition: run `penguinmails maintain` "
            "daily so the days ahead exist",
            extra={"action": "maintain", "rows": report.default_rows},
        )
    log.info(
        "maintenance done",
        extra={
            "action": "maintain",
            # ("created" is a LogRecord attribute of its own.)
            "partitions_created": report.created,
            "partitions_dropped": report.dropped,
            "partitions_kept": report.kept,
        },
    )
    return report


async def _drop(conn: asyncpg.Connection, name: str, report: Report) -> None:
    if not (_DAY.match(name) or name == "webhook_deliveries_legacy"):
        return  # not one of ours to drop
    async with conn.transaction():
        if not await conn.fetchval(SQL["try_lock"]):
            report.skipped = True
            return
        # The partition's partial indexes answer this without reading its delivered rows.
        unfinished = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {name} WHERE status IN ('pending', 'delivering'))"
        )
        if unfinished:
            report.kept.append(name)
            return
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(f"ALTER TABLE webhook_deliveries DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
        except asyncpg.LockNotAvailableError:
            # A long query on the outbox: next run, rather than every writer queued behind us.
            log.warning(
                "partition busy; dropping it next run",
                extra={"action": "maintain", "partition": name},
            )
            report.kept.append(name)
            return
        report.dropped.append(name)
