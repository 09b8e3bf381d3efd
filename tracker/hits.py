"""Recording opens and clicks in small batches: one commit for many hits, a few ms apart.

A pixel burst after a campaign goes out is thousands of requests a second; a transaction per
request would make Postgres the bottleneck. So hits go into a buffer that one writer task
flushes every `interval` seconds or every `max_batch` hits, in one statement. A request
waits (up to `commit_wait`) for its batch to commit before it is answered, so a 200 or 302
means the hit is in Postgres; if the database is down the answer goes out anyway after
`commit_wait` (a recipient's click must not hang on our outage) and the hit stays buffered,
retried with back-off, and is written when the database returns. A clean shutdown flushes
what is left. The shape is pgqueuer's buffer: flush on size or time, put back on failure,
drain on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from penguinmails.queries import load
from tracker.classify import CLICK_MACHINE_WINDOW_SECONDS, OPEN_MACHINE_WINDOW_SECONDS
from tracker.metrics import TrackerMetrics

log = logging.getLogger(__name__)

SQL = load("tracker")

# Errors that mean "the database is not reachable right now": keep the batch and retry.
_TRANSIENT = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization: try again
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.UndefinedTableError,  # not migrated yet: wait rather than drop hits
    TimeoutError,
)


def _clean(text: str | None, limit: int) -> str | None:
    """Postgres text cannot hold NUL, and a header is no reason to store kilobytes."""
    if text is None:
        return None
    return text.replace("\x00", "")[:limit]


@dataclass(frozen=True, slots=True)
class Hit:
    type: str  # "email.opened" or "email.clicked"
    message_id: int  # the queue id, as carried by the token
    at: datetime
    user_agent: str
    ip_prefix: str | None
    machine_reason: str | None
    link_index: int | None = None
    url: str | None = None


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class HitRecorder:
    """Buffers hits and writes them in batches with up to `writers` batches in flight.

    Several writers let the next batch commit while the previous one is still in Postgres:
    with one, every request waiting on a commit would also wait for the batch before it.
    First-hit decisions stay race-free across writers (see `record_hits`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: TrackerMetrics,
        *,
        max_batch: int = 64,
        interval: float = 0.005,
        commit_wait: float = 2.0,
        max_buffer: int = 100_000,
        writers: int = 4,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max_batch = max_batch
        self._interval = interval
        self._commit_wait = commit_wait
        self._max_buffer = max_buffer
        self._writers = writers
        self._buffer: deque[tuple[Hit, asyncio.Future[bool]]] = deque()
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._delay = 0.05  # back-off after a failed write, shared by the writers
        metrics.hit_buffer.set_function(lambda: len(self._buffer))

    def __len__(self) -> int:
        return len(self._buffer)

    async def record(self, hit: Hit) -> bool:
        """Buffer a hit; True once it is committed, False if that took longer than commit_wait.

        The hit stays buffered either way: False only means the caller stopped waiting.
        """
        if len(self._buffer) >= self._max_buffer or self._closing:
            self._metrics.hits_dropped.inc()
            log.warning("hit buffer full; hit dropped", extra={"action": "hit_dropped"})
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._buffer.append((hit, future))
        self._pending.set()
        if len(self._buffer) >= self._max_batch:
            self._full.set()
        # A timer that resolves the future, cheaper per request than wait_for(shield(...)).
        timer = loop.call_later(self._commit_wait, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop taking hits; run() writes what is buffered and returns."""
        self._closing = True
        self._pending.set()
        self._full.set()

    async def run(self) -> None:
        """Gather batches on size or time and hand them to writers, until closed and empty."""
        slots = asyncio.Semaphore(self._writers)
        writing: set[asyncio.Task[None]] = set()
        try:
            while True:
                if self._closing and not self._buffer:
                    if not writing:
                        break
                    await asyncio.wait(set(writing))  # a failed writer puts its batch back
                    continue
                await self._pending.wait()
                if not self._closing and len(self._buffer) < self._max_batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._interval)
                # A writer slot before the batch: while all writers are busy the batch grows.
                await slots.acquire()
                count = min(self._max_batch, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(count)]
                if len(self._buffer) < self._max_batch:
                    self._full.clear()
                if not self._buffer:
                    self._pending.clear()
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._flush(batch, slots), name="hit-writer")
                writing.add(task)
                task.add_done_callback(writing.discard)
        finally:
            for task in writing:
                task.cancel()
            await asyncio.gather(*writing, return_exceptions=True)

    async def _flush(
        self, batch: list[tuple[Hit, asyncio.Future[bool]]], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._write(batch)
            self._delay = 0.05
        except asyncio.CancelledError:
            # Shutdown ran out of time mid-write: count the batch as unwritten (it may have
            # committed; an undercount would be the worse error).
            self._put_back(batch)
            raise
        except _TRANSIENT as exc:
            self._put_back(batch)
            self._metrics.hit_flush_errors.inc()
            log.warning(
                "writing hits failed; will retry",
                extra={"action": "record_hits", "hits": len(batch), "error": str(exc)},
            )
            await asyncio.sleep(self._delay)  # holding the slot: failing writers slow down
            self._delay = min(self._delay * 2, 5.0)
        except asyncpg.PostgresError as exc:
            # Not an outage but something in the batch the database refuses: write the hits
            # one by one so one bad hit does not hold the others back forever.
            log.error(
                "a batch of hits was refused; writing them one by one",
                extra={"action": "record_hits", "hits": len(batch), "error": str(exc)},
            )
            await self._write_singly(batch)
        except Exception:
            self._put_back(batch)
            log.exception("writing hits crashed; will retry", extra={"action": "record_hits"})
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, 5.0)
        finally:
            slots.release()

    def _put_back(self, batch: list[tuple[Hit, asyncio.Future[bool]]]) -> None:
        self._buffer.extendleft(reversed(batch))
        self._pending.set()
        if len(self._buffer) >= self._max_batch:
            self._full.set()

    async def _write(self, batch: list[tuple[Hit, asyncio.Future[bool]]]) -> None:
        hits = [h for h, _ in batch]
        started = time.perf_counter()
        await self._pool.execute(
            SQL["record_hits"],
            [h.message_id for h in hits],
            [h.type for h in hits],
            [h.at for h in hits],
            [_clean(h.user_agent, 512) for h in hits],
            [h.ip_prefix for h in hits],
            [h.machine_reason for h in hits],
            [h.link_index for h in hits],
            [_clean(h.url, 4096) for h in hits],
            OPEN_MACHINE_WINDOW_SECONDS,
            CLICK_MACHINE_WINDOW_SECONDS,
        )
        self._metrics.hit_flush_seconds.observe(time.perf_counter() - started)
        self._metrics.hits_recorded.inc(len(batch))
        for _, future in batch:
            if not future.done():
                future.set_result(True)

    async def _write_singly(self, batch: list[tuple[Hit, asyncio.Future[bool]]]) -> None:
        for item in batch:
            try:
                await self._write([item])
            except _TRANSIENT:
                self._put_back([item])
            except asyncpg.PostgresError as exc:
                self._metrics.hits_dropped.inc()
                log.error(
                    "hit refused by the database; dropped",
                    extra={
                        "action": "hit_dropped",
                        "message_id": item[0].message_id,
                        "error": str(exc),
                    },
                )
