"""A group-commit buffer: many small writes, one commit per batch, a few milliseconds apart.

A transaction per item would make Postgres the bottleneck of the hot paths (an outcome per
delivered message, a row per open or click). So callers hand items to a buffer and wait for
their item's result, and one task, `run`, gathers them into batches, with up to `writers`
batches in flight at once: a free writer takes a batch when `max_batch` items wait or after
gathering for `interval` seconds, whichever is sooner. A batch that fails goes back to the
front of the buffer and is retried after a back-off; `close` stops waiting for batches to
fill, and `run` returns once everything buffered is written. The shape is pgqueuer's
buffer: flush on size or time, put back on failure, drain on exit.

The owner supplies two functions. `write(items)` commits one batch and returns one result
per item, in order. `failed(exc, items)` is asked when a write raises, and says what the
error means:
- RETRY: the database is away (or busy): put the batch back, back off, try it again.
- REFUSED: the database refuses something in the batch: its items are written one by one,
  so that one bad item does not hold the others back forever; an item refused on its own is
  dropped, and its caller is never answered (it waits with a timeout of its own).
An exception `failed` raises ends `run` with it: that is how an owner says "a bug, stop".
Logging and metrics are the owner's, in those two functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")  # an item to write
R = TypeVar("R")  # what its caller learns once it is written


class Failure(enum.Enum):
    RETRY = "retry"
    REFUSED = "refused"


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
        failed: Callable[[Exception, list[T]], Failure],
        *,
        max_batch: int,
        interval: float,
        writers: int = 1,
        first_backoff: float = 0.05,
        max_backoff: float = 5.0,
        name: str = "group-commit",
    ) -> None:
        self._write = write
        self._failed = failed
        self._max_batch = max_batch
        self._interval = interval
        self._writers = writers
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._backoff = first_backoff  # shared by the writers
        self._name = name
        self._items: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._pending = asyncio.Event()  # something is buffered
        self._full = asyncio.Event()  # a whole batch is buffered
        self._closing = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, item: T) -> asyncio.Future[R]:
        """Buffer an item; the future gets its result once its batch is committed.

        Cancelling the future does not take the item back: it is written all the same.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        self._pending.set()
        if len(self._items) >= self._max_batch:
            self._full.set()
        return future

    def close(self) -> None:
        """Stop waiting for batches to fill; run() writes what is buffered and returns."""
        self._closing = True
        self._pending.set()
        self._full.set()

    async def run(self) -> None:
        """Gather batches on size or time and hand them to writers, until closed and empty."""
        slots = asyncio.Semaphore(self._writers)
        writing: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as group:  # a writer that raises ends run() with it
            while True:
                if self._closing and not self._items:
                    if not writing:
                        break
                    await asyncio.wait(set(writing))  # a failed writer puts its batch back
                    continue
                await self._pending.wait()
                # A writer slot before the batch: while every writer is busy the batch grows,
                # and a free writer still gathers for `interval`, so one writer's commits are
                # at least that far apart.
                await slots.acquire()
                if not self._closing and len(self._items) < self._max_batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._interval)
                batch = self._take()
                if not batch:
                    slots.release()
                    continue
                task = group.create_task(self._flush(batch, slots), name=self._name)
                writing.add(task)
                task.add_done_callback(writing.discard)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [self._items.popleft() for _ in range(min(self._max_batch, len(self._items)))]
        if len(self._items) < self._max_batch:
            self._full.clear()
        if not self._items:
            self._pending.clear()
        return batch

    def _put_back(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self._items.extendleft(reversed(batch))
        self._pending.set()
        if len(self._items) >= self._max_batch:
            self._full.set()

    async def _flush(
        self, batch: list[tuple[T, asyncio.Future[R]]], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._write_batch(batch)
        finally:
            slots.release()

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self._write(items)
        except asyncio.CancelledError:
            # Shutdown ran out of time mid-write: count the batch as unwritten (it may have
            # committed; an undercount would be the worse error).
            self._put_back(batch)
            raise
        except Exception as exc:
            failure = self._failed(exc, items)
            if failure is Failure.RETRY:
                self._put_back(batch)
                await asyncio.sleep(self._backoff)  # holding the slot: failing writers slow down
                self._backoff = min(self._backoff * 2, self._max_backoff)
            elif len(batch) > 1:
                await self._one_by_one(batch)
            return
        self._backoff = self._first_backoff
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller may have stopped waiting
                future.set_result(result)

    async def _one_by_one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        for at, entry in enumerate(batch):
            try:
                await self._write_batch([entry])
            except asyncio.CancelledError:
                self._put_back(batch[at + 1 :])  # the one being written is back already
                raise
