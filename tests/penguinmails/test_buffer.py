"""The group-commit buffer against a real table: batches, put back, one by one, drain."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from penguinmails.buffer import Failure, GroupCommit
from tests.helpers import wait_for

UNLUCKY = 1_000_000  # an item the writer cannot handle at all: a bug, not a database error


class Table:
    """Writes ints into a table whose CHECK refuses negative ones; answers n * 10 each."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.batches: list[list[int]] = []

    async def write(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if UNLUCKY in items:
            raise LookupError("unlucky")
        await self.pool.execute("INSERT INTO buffered SELECT unnest($1::int[])", items)
        return [n * 10 for n in items]

    def failed(self, exc: Exception, items: list[int]) -> Failure:
        if isinstance(exc, asyncpg.UndefinedTableError):
            return Failure.RETRY
        if isinstance(exc, asyncpg.CheckViolationError):
            return Failure.REFUSED
        raise exc

    async def rows(self) -> list[int]:
        return [r["n"] for r in await self.pool.fetch("SELECT n FROM buffered ORDER BY n")]


@pytest.fixture
async def table(pool: asyncpg.Pool) -> Table:
    await pool.execute("CREATE TABLE buffered (n int PRIMARY KEY CHECK (n >= 0))")
    return Table(pool)


def buffer(table: Table, *, max_batch: int = 40, interval: float = 0.01) -> GroupCommit[int, int]:
    return GroupCommit(
        table.write, table.failed, max_batch=max_batch, interval=interval, first_backoff=0.01
    )


async def test_callers_get_their_own_results_from_a_few_commits(table: Table) -> None:
    commits = buffer(table)
    runner = asyncio.create_task(commits.run())
    results = await asyncio.wait_for(asyncio.gather(*(commits.submit(n) for n in range(100))), 10)
    commits.close()
    await asyncio.wait_for(runner, 10)

    assert results == [n * 10 for n in range(100)]
    assert await table.rows() == list(range(100))
    assert max(len(b) for b in table.batches) <= 40
    assert len(table.batches) <= 5


async def test_a_batch_goes_out_when_full_and_the_rest_on_close(table: Table) -> None:
    commits = buffer(table, max_batch=5, interval=30.0)
    runner = asyncio.create_task(commits.run())
    full = [commits.submit(n) for n in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*full), 5) == [0, 10, 20, 30, 40]
    waiting = commits.submit(5)
    await asyncio.sleep(0.2)
    assert not waiting.done()  # not full, and the interval is long
    commits.close()
    await asyncio.wait_for(runner, 10)
    assert waiting.result() == 50
    assert len(commits) == 0


async def test_a_failed_batch_is_put_back_and_written_later(table: Table) -> None:
    commits = buffer(table)
    runner = asyncio.create_task(commits.run())
    await table.pool.execute("ALTER TABLE buffered RENAME TO buffered_away")
    futures = [commits.submit(n) for n in (1, 2, 3)]
    await wait_for(lambda: len(table.batches) >= 2)  # tried, put back, tried again
    assert not any(f.done() for f in futures)
    await table.pool.execute("ALTER TABLE buffered_away RENAME TO buffered")
    assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [10, 20, 30]
    commits.close()
    await asyncio.wait_for(runner, 10)
    assert await table.rows() == [1, 2, 3]


async def test_an_item_refused_on_its_own_is_dropped_and_the_rest_written(table: Table) -> None:
    commits = buffer(table, max_batch=3, interval=30.0)
    runner = asyncio.create_task(commits.run())
    good, bad, other = (commits.submit(n) for n in (1, -1, 2))
    assert await asyncio.wait_for(asyncio.gather(good, other), 10) == [10, 20]
    commits.close()
    await asyncio.wait_for(runner, 10)

    assert not bad.done()  # dropped: its caller waits with a timeout of its own
    assert await table.rows() == [1, 2]
    assert table.batches == [[1, -1, 2], [1], [-1], [2]]


async def test_an_error_failed_does_not_handle_ends_run(table: Table) -> None:
    commits = buffer(table)
    runner = asyncio.create_task(commits.run())
    commits.submit(UNLUCKY)
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(runner, 10)
    assert raised.group_contains(LookupError, match="unlucky")
