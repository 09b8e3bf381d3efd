"""The MTA worker: claim leased batches, deliver them, write outcomes, shut down cleanly.

A slot is taken before work is claimed (at most `max_in_flight` messages leased by this
worker and not yet committed), so a worker never holds leases it cannot work on. Idle, it
waits for a NOTIFY from the queue, a freed slot, or the poll interval. Side tasks (the
listener, the lease heartbeat, the outcome writer, the idle-connection reaper) run in one
TaskGroup: if one dies, the worker stops instead of limping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from mta import queue
from mta.compose import ComposeError, Composer
from mta.domains import KeyUnavailable
from mta.metrics import MtaMetrics
from mta.outcomes import Outcome, Reply, decide
from mta.routing import RouteError, Router
from mta.slots import ConnectionSlots
from mta.smtp import DomainBusy, Pools
from mta.throttle import Throttles
from penguinmails.config import Settings
from penguinmails.database import DATABASE_ERRORS

log = logging.getLogger(__name__)

KEY_RETRY_SECONDS = 30.0
BUSY_RETRY_SECONDS = 1.0
PRESENCE_SECONDS = 2.0  # how often a worker says it is alive; 3 missed beats and it is gone
SANDBOX_POOL = "(sandbox)"  # not a valid domain name, so never a real destination's pool


class ResultWriter:
    """Buffers outcomes and writes them in batches, a few milliseconds apart.

    A caller's `write` returns once its outcome is committed; until then its message
    keeps a slot. A failed batch stays in the buffer and is retried.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500, interval: float = 0.005):
        self._pool = pool
        self._max_batch = max_batch
        self._interval = interval
        self._buffer: list[tuple[queue.Result, asyncio.Future[bool]]] = []
        self._pending = asyncio.Event()
        self._closing = False

    async def write(self, result: queue.Result) -> bool:
        """True when written; False when the lease had passed to another worker."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._buffer.append((result, future))
        self._pending.set()
        return await asyncio.shield(future)

    def close(self) -> None:
        self._closing = True
        self._pending.set()

    async def run(self) -> None:
        delay = 0.1
        while not (self._closing and not self._buffer):
            await self._pending.wait()
            if not self._closing:
                await asyncio.sleep(self._interval)  # let a batch gather
            batch = self._buffer[: self._max_batch]
            if not batch:
                self._pending.clear()
                continue
            try:
                written = await queue.record(self._pool, [r for r, _ in batch])
            except DATABASE_ERRORS as exc:
                log.warning(
                    "writing outcomes failed; will retry",
                    extra={"action": "record_outcomes", "error": str(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            del self._buffer[: len(batch)]
            for result, future in batch:
                if not future.done():
                    future.set_result(result.id in written)
            if not self._buffer:
                self._pending.clear()


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        database_url: str,
        owner: str | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._mta = settings.mta
        self._database_url = database_url
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._composer = Composer(pool, settings)
        self._router = Router(settings.mta)
        self._throttles = Throttles(settings.mta)
        self._slots = ConnectionSlots(pool, self.owner, settings.mta.lease_seconds)
        self.pools = Pools(settings.mta, self._slots)
        self._writer = ResultWriter(pool, interval=settings.mta.outcome_flush_interval)
        self.metrics = MtaMetrics(settings.mta)
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._unwritten: set[int] = set()  # in flight, outcome not yet handed to the writer
        self._on_wire: set[int] = set()  # in an SMTP transaction right now
        self._leases: dict[int, uuid.UUID] = {}
        self._kick = asyncio.Event()
        self._stopping = False

    def stop(self) -> None:
        """Stop claiming; in-flight messages finish (or are released) and run() returns."""
        self._stopping = True
        self._kick.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            side = [
                group.create_task(self._listen(), name="queue-listener"),
                group.create_task(self._heartbeat(), name="lease-heartbeat"),
                group.create_task(self._presence(), name="presence"),
                group.create_task(self.pools.reap_idle(), name="idle-reaper"),
            ]
            writer = group.create_task(self._writer.run(), name="outcome-writer")
            try:
                await self._claim_loop()
            finally:
                await self._drain()
                self._writer.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), self._mta.shutdown_grace)
                writer.cancel()
                await self.pools.close()
                with contextlib.suppress(*DATABASE_ERRORS):
                    await self._slots.release_all()
                    await self._slots.forget()
                for task in side:
                    task.cancel()
        log.info("worker stopped", extra={"action": "worker_stopped", "owner": self.owner})

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._kick.clear()
            free = self._mta.max_in_flight - len(self._inflight)
            if free <= 0:
                await self._kick.wait()
                continue
            want = min(self._mta.batch_size, free)
            try:
                rows = await queue.claim(self._pool, want, self.owner, self._mta.lease_seconds)
            except DATABASE_ERRORS as exc:
                log.warning("claim failed", extra={"action": "claim", "error": str(exc)})
                rows = []
            self.metrics.claim_batch.observe(len(rows))
            for row in rows:
                self._start(row)
            self.metrics.in_flight.set(len(self._inflight))
            if len(rows) < want and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self._mta.poll_interval)

    def _start(self, row: asyncpg.Record) -> None:
        message_id: int = row["id"]
        self._leases[message_id] = row["lease_token"]
        self._unwritten.add(message_id)
        task = asyncio.create_task(self._deliver(row), name=f"deliver-{message_id}")
        self._inflight[message_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(message_id, None)
            self._leases.pop(message_id, None)
            self._unwritten.discard(message_id)
            self._kick.set()
            if not _.cancelled() and _.exception() is not None:
                log.error(
                    "delivery task crashed",
                    exc_info=_.exception(),
                    extra={"action": "deliver", "queue_id": message_id},
                )

        task.add_done_callback(done)

    async def _deliver(self, row: asyncpg.Record) -> None:
        outcome = await self._attempt(row)
        if outcome is None:
            return
        data = {"recipient": row["recipient"], "message_id": row["message_id"], **outcome.data}
        outcome = dataclasses.replace(outcome, data=data)
        self._unwritten.discard(row["id"])
        written = await self._writer.write(queue.Result(row["id"], row["lease_token"], outcome))
        if written:
            domain = self.metrics.domain_label(row["recipient_domain"])
            self.metrics.outcomes.labels(outcome.status, domain).inc()
        else:
            log.warning(
                "lease lost before the outcome was written; newer outcome stands",
                extra={"action": "record_outcome", "queue_id": row["id"]},
            )

    async def _attempt(self, row: asyncpg.Record) -> Outcome | None:
        """Try one delivery; None when the message was given back untried."""
        if row["suppressed"]:
            return Outcome("suppressed", "email.suppressed", attempted=0)
        domain: str = row["recipient_domain"]
        # Test-mode messages share one pool toward the sink, apart from real domains' pools.
        pool_key = SANDBOX_POOL if row["sandbox"] else domain
        until = self._throttles[domain].backoff_until()
        if until is not None:
            await queue.release(
                self._pool, [(row["id"], row["lease_token"])], datetime.fromtimestamp(until, UTC)
            )
            return None
        try:
            route = await self._router.route(domain, sandbox=row["sandbox"])
        except RouteError as exc:
            return self._decide(row, Reply(exc.code, str(exc)))
        try:
            sender, data = await self._composer.render(row)
        except ComposeError as exc:
            return Outcome(
                "failed",
                "email.failed",
                attempted=0,
                reply=Reply(None, f"5.6.0 cannot compose: {exc}"),
                data={"error": str(exc)},
            )
        except KeyUnavailable as exc:
            # The message is fine; its signing key cannot be read right now. Give it back
            # untried rather than sending it unsigned or failing it.
            log.warning(
                "DKIM key unavailable; message released",
                extra={"action": "dkim_unavailable", "queue_id": row["id"], "error": str(exc)},
            )
            retry_at = datetime.now(UTC) + timedelta(seconds=KEY_RETRY_SECONDS)
            await queue.release(self._pool, [(row["id"], row["lease_token"])], retry_at)
            return None
        except Exception as exc:
            # A bug of ours, or a row written around the API: defer with backoff (it bounces
            # at the maximum age) rather than crash and come back on every lease expiry.
            log.exception(
                "composing failed unexpectedly", extra={"action": "compose", "queue_id": row["id"]}
            )
            return self._decide(row, Reply(None, f"4.3.0 internal error composing: {exc!r}"))
        throttle = self._throttles[domain]
        await throttle.bucket.acquire()
        until = throttle.backoff_until()  # the domain may have pushed back while we waited
        if until is not None:
            await queue.release(
                self._pool, [(row["id"], row["lease_token"])], datetime.fromtimestamp(until, UTC)
            )
            return None
        started = time.perf_counter()
        try:
            reply = await self.pools[pool_key].send(
                route, sender, row["recipient"], data, on_wire=lambda: self._on_wire.add(row["id"])
            )
        except DomainBusy:
            # Other processes hold every connection to this domain: let one of them have it.
            retry_at = datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS)
            await queue.release(self._pool, [(row["id"], row["lease_token"])], retry_at)
            return None
        finally:
            self._on_wire.discard(row["id"])
        self.metrics.smtp_seconds.observe(time.perf_counter() - started)
        throttle.note_reply(reply.code)
        return self._decide(row, reply, not_before=throttle.backoff_until())

    def _decide(
        self, row: asyncpg.Record, reply: Reply, not_before: float | None = None
    ) -> Outcome:
        return decide(
            reply,
            attempts=row["attempts"] + 1,
            created_at=row["created_at"],
            now=datetime.now(UTC),
            settings=self._mta,
            not_before=not_before,
        )

    async def _drain(self) -> None:
        """Wait a bounded time for in-flight messages, then cancel and release the rest."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=self._mta.shutdown_grace)
        leftover = [(i, self._leases[i]) for i in self._unwritten if i in self._leases]
        untried = [lease for lease in leftover if lease[0] not in self._on_wire]
        interrupted = [lease for lease in leftover if lease[0] in self._on_wire]
        for task in list(self._inflight.values()):
            task.cancel()
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()))
        now = datetime.now(UTC)
        try:
            await queue.release(self._pool, untried, now)
            await queue.release(self._pool, interrupted, now, possible_duplicate=True)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not release leases; they will expire",
                extra={"action": "release", "error": str(exc)},
            )

    async def _heartbeat(self) -> None:
        interval = self._mta.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await queue.extend_leases(self._pool, self.owner, self._mta.lease_seconds)
                await self._slots.extend()
            except DATABASE_ERRORS as exc:
                log.warning(
                    "lease heartbeat failed", extra={"action": "heartbeat", "error": str(exc)}
                )

    async def _presence(self) -> None:
        """Count the live MTA processes, so each takes its share of every domain's cap."""
        while True:
            try:
                self.pools.processes = await self._slots.seen(PRESENCE_SECONDS * 3)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "presence heartbeat failed", extra={"action": "presence", "error": str(exc)}
                )
            await asyncio.sleep(PRESENCE_SECONDS)

    async def _listen(self) -> None:
        """LISTEN on the queue channel; reconnect when the connection drops (polling covers)."""
        while True:
            try:
                conn = await asyncpg.connect(self._database_url)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "queue listener cannot connect", extra={"action": "listen", "error": str(exc)}
                )
                await asyncio.sleep(self._mta.poll_interval * 5)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await conn.add_listener(queue.CHANNEL, lambda *_: self._kick.set())
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
