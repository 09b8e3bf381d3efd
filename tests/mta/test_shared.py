"""Shaping state shared through Postgres: two processes' reservations form one line at a
level's rate, and what an automation rule decides holds for every process, announced once."""

from __future__ import annotations

import asyncio
import itertools
import time

import asyncpg
import pytest

from mta.shaping import Automation, Level, Scope
from mta.shared import MAX_WAIT, SharedShaping, scope_key
from penguinmails.status import SQL as STATUS_SQL
from tests.helpers import queue_messages

PROVIDER = Level("provider:yahoo", max_connections=5, rate_per_second=10.0, burst=5)


async def test_two_processes_share_one_rate_rather_than_taking_it_each(pool: asyncpg.Pool) -> None:
    one, two = SharedShaping(pool), SharedShaping(pool)
    sends = []  # when each reservation may send: when it was made, plus its wait
    for i in range(25):  # alternating, as two processes' deliveries would
        wait = await (one if i % 2 else two).reserve([PROVIDER])
        sends.append(time.monotonic() + wait)
        if i < 5:
            assert wait == 0.0  # the burst
    # Then one place in line each, 0.1 s apart at 10 a second, whichever process asks (the
    # line is kept by the database's clock, so allow a little for the round trips).
    gaps = [b - a for a, b in itertools.pairwise(sends[5:])]
    assert all(0.05 < gap < 0.15 for gap in gaps), gaps
    unrated = Level("site:x", max_connections=10, rate_per_second=None, burst=1)
    assert await one.reserve([unrated]) == 0.0
    assert await pool.fetchval("SELECT count(*) FROM shaping_rates") == 1


async def test_a_wait_beyond_the_bound_is_refunded_for_the_next_in_line(pool: asyncpg.Pool) -> None:
    shaping = SharedShaping(pool)
    slow = Level("provider:slow", max_connections=None, rate_per_second=1.0, burst=1)
    waits = [await shaping.reserve([slow]) for _ in range(int(MAX_WAIT) + 3)]
    assert waits[-1] > MAX_WAIT
    tokens = await pool.fetchval("SELECT tokens FROM shaping_rates WHERE key = 'provider:slow'")
    # The refunded reservations left no debt: the next one waits no longer than the last kept.
    assert tokens > -(MAX_WAIT + 1)


async def test_a_fired_rule_holds_every_process_and_is_announced_once(pool: asyncpg.Pool) -> None:
    [message] = await queue_messages(pool, ["ann@yahoo.test"])
    rule = Automation(
        name="yahoo-deferred",
        provider="yahoo",
        text=r"\[TSS04\]",
        action="suspend",
        scope="provider",
        duration=600,
    )
    scope = Scope("yahoo.test", "site:mta5.am0.yahoodns.net", "yahoo")
    key = scope_key(rule.scope, scope, tenant_id=1, campaign_id=None)
    assert key == "provider:yahoo"
    one, two = SharedShaping(pool), SharedShaping(pool)
    reply = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"
    first = await one.fire(rule, key, message, reply, {"domain": "yahoo.test"})
    again = await two.fire(rule, key, message, reply, {"domain": "yahoo.test"})
    assert again.until >= first.until
    events = await pool.fetch("SELECT data FROM events WHERE type = 'delivery.throttled'")
    assert len(events) == 1
    assert events[0]["data"]["scope"] == "provider:yahoo"
    assert events[0]["data"]["rule"] == "yahoo-deferred"
    assert events[0]["data"]["domain"] == "yahoo.test"
    assert events[0]["data"]["until"] == first.until.isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )

    other = SharedShaping(pool)
    assert other.holding([scope.site, "provider:yahoo"]) is None  # not read yet
    await other.refresh(force=True)
    held = other.holding([scope.site, "provider:yahoo"])
    assert held is not None and held.rule == "yahoo-deferred"
    assert other.holding(["provider:google"]) is None

    # Ended early by an operator: every process sees it within a refresh.
    await pool.execute("DELETE FROM shaping_suspensions")
    await other.refresh(force=True)
    assert other.holding(["provider:yahoo"]) is None


async def test_the_deliveries_asking_for_a_refresh_together_share_one_read(
    pool: asyncpg.Pool,
) -> None:
    class Clock:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    shaping = SharedShaping(pool, clock=clock)
    await pool.execute(
        "INSERT INTO shaping_suspensions (key, action, until, rule, reply)"
        " VALUES ('site:a', 'suspend', now() + interval '1 hour', 'r', '421')"
    )
    # A claim's worth of deliveries, each asking before its own attempt: one read between
    # them (each read counts one version), and every one sees what it read.
    await asyncio.gather(*(shaping.refresh() for _ in range(200)))
    assert shaping.version == 1
    assert shaping.holding(["site:a"]) is not None
    await asyncio.gather(*(shaping.refresh() for _ in range(200)))
    assert shaping.version == 1  # within the second: the view stands
    # A read that fails fails every caller that waited on it, and the next one reads again.
    await pool.execute("ALTER TABLE shaping_suspensions RENAME TO shaping_suspensions_away")
    try:
        clock.now += 1.0
        results = await asyncio.gather(
            *(shaping.refresh() for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, asyncpg.UndefinedTableError) for r in results), results
    finally:
        await pool.execute("ALTER TABLE shaping_suspensions_away RENAME TO shaping_suspensions")
    await shaping.refresh()
    assert shaping.version == 2


async def test_a_throttle_lowers_a_level_s_rate_and_connections_for_its_duration(
    pool: asyncpg.Pool,
) -> None:
    [message] = await queue_messages(pool, ["ann@outlook.test"])
    rule = Automation(
        name="microsoft-rate-limited",
        action="throttle",
        scope="provider",
        duration=60,
        rate_per_second=1.0,
        max_connections=2,
    )
    shaping = SharedShaping(pool)
    await shaping.fire(rule, "provider:microsoft", message, "451 4.7.650 rate limited", {})
    level = Level("provider:microsoft", max_connections=10, rate_per_second=20.0, burst=1)
    assert shaping.max_connections("provider:microsoft", 10) == 2
    assert shaping.max_connections("provider:other", 10) == 10
    assert shaping.holding(["provider:microsoft"]) is None  # throttled, not suspended
    waits = [await shaping.reserve([level]) for _ in range(3)]
    assert waits[0] == 0.0 and waits[2] == pytest.approx(2.0, abs=0.1)  # 1 a second now


async def test_sites_are_noted_once_and_status_counts_by_them(pool: asyncpg.Pool) -> None:
    await queue_messages(pool, ["a@acme.test", "b@acme.test", "c@globex.test"])
    shaping = SharedShaping(pool)
    google = "site:aspmx.l.google.com"
    await shaping.note_site(Scope("acme.test", google, "google"))
    await shaping.note_site(Scope("globex.test", google, "google"))
    await shaping.note_site(Scope("globex.test", google, "google"))  # no write: unchanged
    rows = await pool.fetch(STATUS_SQL["depth_by_site"], 10)
    assert [(r["site"], r["provider"], r["queued"]) for r in rows] == [(google, "google", 3)]


async def test_metrics_show_depth_by_site_and_provider_and_what_is_held(
    pool: asyncpg.Pool,
) -> None:
    from prometheus_client import generate_latest

    from mta.metrics import MtaMetrics
    from penguinmails.config import MtaSettings

    [first, *_] = await queue_messages(pool, ["a@acme.test", "b@acme.test", "c@plain.test"])
    shaping = SharedShaping(pool)
    await shaping.note_site(Scope("acme.test", "site:aspmx.l.google.com", "google"))
    rule = Automation(name="google-unusual-rate", action="suspend", scope="site", duration=600)
    await shaping.fire(rule, "site:aspmx.l.google.com", first, "421 4.7.28 unusual rate", {})
    metrics = MtaMetrics(MtaSettings())
    await metrics.refresh(pool)
    text = generate_latest(metrics.registry).decode()
    assert (
        'penguinmails_mta_site_queue_depth{provider="google",site="site:aspmx.l.google.com"} 2.0'
        in text
    )
    assert 'penguinmails_mta_provider_queue_depth{provider="google"} 2.0' in text
    assert 'penguinmails_mta_provider_queue_depth{provider="none"} 1.0' in text
    [held] = [line for line in text.splitlines() if line.startswith("penguinmails_mta_shaping")]
    assert 'key="site:aspmx.l.google.com"' in held and 'rule="google-unusual-rate"' in held
    assert 590 < float(held.rsplit(" ", 1)[1]) <= 600


async def test_a_fast_rate_is_reserved_in_chunks_not_a_statement_a_message(
    pool: asyncpg.Pool,
) -> None:
    shaping = SharedShaping(pool)
    fast = Level("site:fast", max_connections=None, rate_per_second=1000.0, burst=1000)

    async def left() -> float:
        return float(
            await pool.fetchval("SELECT tokens FROM shaping_rates WHERE key = 'site:fast'")
        )

    assert await shaping.reserve([fast]) == 0.0
    assert 949 < await left() <= 951  # 50 ms of the rate taken at once
    for _ in range(49):
        assert await shaping.reserve([fast]) == 0.0
    assert 949 < await left() <= 951  # handed out here, no statement
    await shaping.reserve([fast])
    assert 899 < await left() < 950  # the next chunk (plus what refilled meanwhile)
