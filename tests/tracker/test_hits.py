"""The hit recorder: batches, commits before answering, survives database trouble, drains."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from tests.helpers import wait_for
from tracker.hits import Hit, HitRecorder
from tracker.metrics import TrackerMetrics


def opened(message: int, agent: str = "Mozilla/5.0 (X11) Firefox/125.0") -> Hit:
    return Hit("email.opened", message, datetime.now(UTC), agent, "198.51.100.0/24", None)


async def count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.opened'")


class Running:
    def __init__(self, pool: asyncpg.Pool, **options: float) -> None:
        self.metrics = TrackerMetrics()
        self.recorder = HitRecorder(pool, self.metrics, **options)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HitRecorder:
        self.task = asyncio.create_task(self.recorder.run())
        return self.recorder

    async def __aexit__(self, *exc: object) -> None:
        self.recorder.close()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


async def test_concurrent_hits_share_a_few_commits(pool, sent_messages):
    messages = await sent_messages(50)
    running = Running(pool)
    async with running as recorder:
        results = await asyncio.gather(*(recorder.record(opened(m)) for m in messages * 4))
    assert all(results)  # every caller was told "committed"
    assert await count(pool) == 200
    flushes = next(
        s
        for s in running.metrics.hit_flush_seconds.collect()[0].samples
        if s.name.endswith("_count")
    ).value
    assert flushes <= 5, flushes
    unique = await pool.fetchval("SELECT count(*) FROM events WHERE is_unique")
    assert unique == 50  # one first open per message, even within one batch
    assert await pool.fetchval("SELECT count(*) FROM engagement_counts") == 50
    assert await pool.fetchval("SELECT sum(opens) FROM engagement_counts") == 200


async def test_a_stalled_database_delays_recording_but_loses_nothing(pool, sent_messages):
    (message,) = await sent_messages()
    async with pool.acquire() as blocker:
        async with Running(pool, commit_wait=0.2) as recorder:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            # Answered without the commit after commit_wait: a click must not hang on us.
            assert await recorder.record(opened(message)) is False
            await tx.rollback()
            await wait_for(lambda: _count_is(pool, 1))


async def _count_is(pool: asyncpg.Pool, expected: int) -> bool:
    return await count(pool) == expected


async def test_a_failed_batch_is_put_back_and_retried(pool, sent_messages, database_url):
    messages = await sent_messages(3)
    running = Running(pool, commit_wait=0.2)
    async with running as recorder:
        async with pool.acquire() as victim:
            # Break the next write: rename the table away, as an unfinished deploy would.
            await victim.execute("ALTER TABLE events RENAME TO events_away")
            results = await asyncio.gather(*(recorder.record(opened(m)) for m in messages))
            assert results == [False, False, False]
            await wait_for(lambda: running.metrics.hit_flush_errors._value.get() >= 1)
            assert len(recorder) == 3
            await victim.execute("ALTER TABLE events_away RENAME TO events")
        await wait_for(lambda: _count_is(pool, 3))


async def test_killed_connections_are_survived(pool, sent_messages, pg_server):
    messages = await sent_messages(2)
    running = Running(pool)
    async with running as recorder:
        assert await recorder.record(opened(messages[0]))
        database = await pool.fetchval("SELECT current_database()")
        admin = await asyncpg.connect(pg_server.url())
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            assert killed >= 1
        finally:
            await admin.close()
        await recorder.record(opened(messages[1]))
        await wait_for(lambda: _count_is(pool, 2))


async def test_closing_drains_the_buffer(pool, sent_messages):
    messages = await sent_messages(20)
    running = Running(pool, interval=30.0, commit_wait=0.01)
    async with running as recorder:
        await asyncio.gather(*(recorder.record(opened(m)) for m in messages))
        assert await count(pool) == 0  # still waiting for the 30 s window
    assert await count(pool) == 20


async def test_hits_for_unknown_messages_are_dropped_quietly(pool, sent_messages):
    (message,) = await sent_messages()
    async with Running(pool) as recorder:
        assert await recorder.record(opened(999_999))
        assert await recorder.record(opened(message, agent="nul\x00byte"))
    assert await count(pool) == 1
    agent = "SELECT data->>'user_agent' FROM events WHERE type = 'email.opened'"
    assert await pool.fetchval(agent) == "nulbyte"
