"""Recording opens and clicks in small batches: one commit for many hits, a few ms apart.

A pixel burst after a campaign goes out is thousands of requests a second; a transaction per
request would make Postgres the bottleneck. So hits go into a group-commit buffer
(penguinmails.buffer) flushed every `interval` seconds or every `max_batch` hits, in one
statement. A request waits (up to `commit_wait`) for its batch to commit before it is
answered, so a 200 or 302 means the hit is in Postgres; if the database is down the answer
goes out anyway after `commit_wait` (a recipient's click must not hang on our outage) and the
hit stays buffered, retried with back-off, and is written when the database returns. A clean
shutdown flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from penguinmails.buffer import Failure, GroupCommit
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
    queue_id: int  # as carried by the token
    at: datetime
    user_agent: str
    ip_prefix: str | None
    machine_reason: str | None
    link_index: int | None = None
    url: str | None = None
    device_type: str | None = None  # tracker.audience: desktop, mobile, tablet, bot, unknown
    country: str | None = None  # English name; None for loopback, private, unlisted
    country_code: str | None = None  # ISO 3166-1 alpha-2


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
        self._commit_wait = commit_wait
        self._max_buffer = max_buffer
        self._hits: GroupCommit[Hit, bool] = GroupCommit(
            self._write,
            self._failed,
            max_batch=max_batch,
            interval=interval,
            writers=writers,
            first_backoff=0.05,
            name="hit-writer",
        )
        metrics.hit_buffer.set_function(lambda: len(self._hits))

    def __len__(self) -> int:
        return len(self._hits)

    async def record(self, hit: Hit) -> bool:
        """Buffer a hit; True once it is committed, False if that took longer than commit_wait.

        The hit stays buffered either way: False only means the caller stopped waiting.
        """
        if len(self._hits) >= self._max_buffer or self._hits.closing:
            self._metrics.hits_dropped.inc()
            log.warning("hit buffer full; hit dropped", extra={"action": "hit_dropped"})
            return False
        future = self._hits.submit(hit)
        # A timer that resolves the future, cheaper per request than wait_for(shield(...)).
        timer = asyncio.get_running_loop().call_later(self._commit_wait, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop taking hits; run() writes what is buffered and returns."""
        self._hits.close()

    async def run(self) -> None:
        await self._hits.run()

    async def _write(self, hits: list[Hit]) -> list[bool]:
        started = time.perf_counter()
        await self._pool.execute(
            SQL["record_hits"],
            [h.queue_id for h in hits],
            [h.type for h in hits],
            [h.at for h in hits],
            [_clean(h.user_agent, 512) for h in hits],
            [h.ip_prefix for h in hits],
            [h.machine_reason for h in hits],
            [h.link_index for h in hits],
            [_clean(h.url, 4096) for h in hits],
            [h.device_type for h in hits],
            [h.country for h in hits],
            [h.country_code for h in hits],
            OPEN_MACHINE_WINDOW_SECONDS,
            CLICK_MACHINE_WINDOW_SECONDS,
        )
        self._metrics.hit_flush_seconds.observe(time.perf_counter() - started)
        self._metrics.hits_recorded.inc(len(hits))
        return [True] * len(hits)

    def _failed(self, exc: Exception, hits: list[Hit]) -> Failure:
        if isinstance(exc, _TRANSIENT):
            self._metrics.hit_flush_errors.inc()
            log.warning(
                "writing hits failed; will retry",
                extra={"action": "record_hits", "hits": len(hits), "error": str(exc)},
            )
            return Failure.RETRY
        if isinstance(exc, asyncpg.PostgresError):
            # Not an outage but something the database refuses: one bad hit must not hold
            # the others back forever.
            if len(hits) == 1:
                self._metrics.hits_dropped.inc()
                log.error(
                    "hit refused by the database; dropped",
                    extra={
                        "action": "hit_dropped",
                        "queue_id": hits[0].queue_id,
                        "error": str(exc),
                    },
                )
            else:
                log.error(
                    "a batch of hits was refused; writing them one by one",
                    extra={"action": "record_hits", "hits": len(hits), "error": str(exc)},
                )
            return Failure.REFUSED
        log.exception("writing hits crashed; will retry", extra={"action": "record_hits"})
        return Failure.RETRY
