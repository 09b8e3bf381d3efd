"""`penguinmails maintain`: partitions of what grows without bound, created ahead, filled, and
dropped past retention.

Three tables are partitioned (migrations 0038-0044):

- the webhook outbox, by day of created_at: a day older than `[retention]
  webhook_deliveries_days` goes once none of its rows is still pending or being delivered
  (a delivery retried for days keeps its day);
- events, by week of created_at: a week goes `events_days` after its end;
- messages, by done_on. Queued, in-flight, deferred, paused and held messages are in the live
  partition, which is never dropped, and a check keeps them there. Each run archives the
  finished messages of the live partition into the week it runs in (in batches, tenant by
  tenant); a week goes `messages_days` after its end, with the per-message tracking rows of
  its messages (engagement counts and firsts, sequence steps).

A tenant may keep its messages or events longer or shorter (`[retention.tenants.NAME]`). A
week is dropped whole once every tenant's retention has passed it; before that, the rows of
each tenant whose retention has passed are deleted from it in batches. With no per-tenant
settings (or only shorter ones) the bulk of every week still goes by a drop.

Dropping is a catalogue change, not a DELETE of its rows: no vacuum debt, no index bloat,
done in moments however many rows it held. Suppressions, campaigns and the analytics rollups
(campaign_stats, campaign_dimension_stats, sending_stats) are never touched, so the numbers
outlive the raw rows.

A run holds a transaction-scoped advisory lock per step, so two hosts' timers never work at
once (the second skips), and each drop waits at most `LOCK_TIMEOUT` for its brief exclusive
lock: a long query makes it try again next run rather than queue every writer behind it.
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
BATCH = 5000  # rows deleted per transaction from a week some tenant still keeps
_DAY = re.compile(r"^webhook_deliveries_(\d{8})$")
# The partitions retention may drop: the weeks it made, and the tables that were there
# before partitioning (their newest row decides). Never messages_live, never a default.
_WEEK = re.compile(r"^(messages|events)_w(\d{8})$")
_DROPPABLE = {"webhook_deliveries_legacy", "events_legacy"}
_UPPER = re.compile(r"TO \('([^']+)'\)")


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # expired, but rows still to deliver
    archived: int = 0  # finished messages moved out of the live partition
    deleted: dict[str, int] = field(default_factory=dict)  # partition -> rows of tenants
    skipped: bool = False  # another run held the lock
    default_rows: int = 0


def upper_bound(bound: str) -> datetime | None:
    match = _UPPER.search(bound)
    if not match or match.group(1) == "infinity":
        return None
    value = datetime.fromisoformat(match.group(1))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


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
        await _create_ahead(conn, settings, today, report)
        report.default_rows = await conn.fetchval(SQL["default_rows"])
    await _archive(conn, settings, today, report)
    await _expire_outbox(conn, settings, today, report)
    tenants = {row["id"]: row["name"] for row in await conn.fetch(SQL["tenants"])}
    for kind in ("messages", "events"):
        await _expire(conn, settings, kind, tenants, today, report)
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
            "messages_archived": report.archived,
            "rows_deleted": report.deleted,
        },
    )
    return report


async def _create_ahead(
    conn: asyncpg.Connection, settings: RetentionSettings, today: date, report: Report
) -> None:
    days = [today + timedelta(days=n) for n in range(settings.ahead_days + 1)]
    for query, prefix, fmt in (
        ("add_day", "webhook_deliveries_", "%Y%m%d"),
        ("add_message_week", "messages_w", None),
        ("add_event_week", "events_w", None),
    ):
        for day in days if fmt else sorted({d - timedelta(days=d.weekday()) for d in days}):
            try:
                async with conn.transaction():  # a savepoint: one bad partition spoils none
                    if await conn.fetchval(SQL[query], day):
                        report.created.append(f"{prefix}{day:%Y%m%d}")
            except asyncpg.InvalidObjectDefinitionError:
                pass  # the table from before partitioning still covers that range
            except asyncpg.CheckViolationError as exc:
                # The default partition holds rows of that range: they stay where they are.
                log.warning(
                    "cannot create a partition",
                    extra={
                        "action": "maintain",
                        "partition": f"{prefix}{day:%Y%m%d}",
                        "error": str(exc),
                    },
                )


async def _archive(
    conn: asyncpg.Connection, settings: RetentionSettings, today: date, report: Report
) -> None:
    """Move the live partition's finished messages into this week's partition, a batch per
    transaction so no lock is held long and the MTA's claims go on between them."""
    for tenant in [row["id"] for row in await conn.fetch(SQL["tenants"])]:
        while True:
            async with conn.transaction():
                if not await conn.fetchval(SQL["try_lock"]):
                    report.skipped = True
                    return
                moved = int(
                    (
                        await conn.execute(
                            SQL["archive_batch"], tenant, settings.archive_batch, today
                        )
                    ).split()[-1]
                )
            report.archived += moved
            if moved < settings.archive_batch:
                break


async def _expire_outbox(
    conn: asyncpg.Connection, settings: RetentionSettings, today: date, report: Report
) -> None:
    horizon = _midnight(today - timedelta(days=settings.webhook_deliveries_days))
    for row in await conn.fetch(SQL["kind_partitions"], "webhook_deliveries"):
        upper = upper_bound(row["bound"])
        name = row["name"]
        if upper is None or upper > horizon:
            continue  # the default partition, or not yet past retention
        if not (_DAY.match(name) or name in _DROPPABLE):
            continue  # not one of ours to drop
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
                continue
        await _drop(conn, "webhook_deliveries", name, report)


async def _expire(
    conn: asyncpg.Connection,
    settings: RetentionSettings,
    kind: str,
    tenants: dict[int, str],
    today: date,
    report: Report,
) -> None:
    """Drop the weeks of `kind` every tenant's retention has passed; from the weeks only some
    tenants' has, delete those tenants' rows."""
    keep = {tenant: settings.days(kind, name) for tenant, name in tenants.items()}
    longest = max([getattr(settings, f"{kind}_days"), *keep.values()])
    for row in await conn.fetch(SQL["kind_partitions"], kind):
        name = row["name"]
        upper = upper_bound(row["bound"])
        if upper is None or not (_WEEK.match(name) or name in _DROPPABLE):
            continue  # the live partition, a default, or not one of ours
        if upper <= _midnight(today - timedelta(days=longest)):
            if kind == "messages":
                await _expire_message_rows(conn, name)
            await _drop(conn, kind, name, report)
            continue
        for tenant, days in keep.items():
            if upper <= _midnight(today - timedelta(days=days)):
                await _delete_tenant_rows(conn, kind, name, tenant, report)


async def _expire_message_rows(conn: asyncpg.Connection, name: str) -> None:
    """The per-message tracking rows of a week about to be dropped, in batches."""
    query = SQL["expire_message_rows"].format(part=name)
    last = 0
    while last is not None:
        async with conn.transaction():
            last = await conn.fetchval(query, last, BATCH)


async def _delete_tenant_rows(
    conn: asyncpg.Connection, kind: str, name: str, tenant: int, report: Report
) -> None:
    query = SQL[f"expire_tenant_{kind}"].format(part=name)
    while True:
        async with conn.transaction():
            gone = int(await conn.fetchval(query, tenant, BATCH))
        if gone:
            report.deleted[name] = report.deleted.get(name, 0) + gone
        if gone < BATCH:
            return


async def _drop(conn: asyncpg.Connection, parent: str, name: str, report: Report) -> None:
    async with conn.transaction():
        if not await conn.fetchval(SQL["try_lock"]):
            report.skipped = True
            return
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
        except asyncpg.LockNotAvailableError:
            # A long query on the table: next run, rather than every writer queued behind us.
            log.warning(
                "partition busy; dropping it next run",
                extra={"action": "maintain", "partition": name},
            )
            report.kept.append(name)
            return
        report.dropped.append(name)
