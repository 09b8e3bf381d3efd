"""The webhook dispatcher: drain the outbox into signed POSTs until every delivery is acked.

Deliveries are rows (webhook_deliveries) written with their event by a trigger, so nothing
here can lose one: the dispatcher leases due rows, posts them, and writes the outcome. A 2xx
is the only success; anything else (including a redirect, which is never followed, and a
timeout) is retried with exponential back-off and jitter until the delivery is `max_age`
old (three days by default, well past the 24 hours receivers are promised). The
`webhook-id` is the delivery's public id (`whd_...`), the same on every retry, so receivers
can dedupe; the body (`payload()`) is built from rows that do not change, so it is the same
bytes on every retry too.

At most `per_endpoint` requests are in flight to one endpoint (counted across dispatchers,
in the claim), so a slow receiver holds a few slots rather than all of them. An endpoint
that answers 410 Gone, or has failed without a single success for `disable_after`, is
disabled and a `webhook.disabled` event recorded.

Idle, the dispatcher waits for a NOTIFY from the fan-out trigger, a retry it scheduled
itself coming due, a freed slot, or the poll interval. Stopping waits `grace` seconds for
requests in flight, then cancels them and gives their rows back untried.

The dispatcher also owns the analytics.updated loop (tracker.analytics), which records
those events for the outbox; it starts and stops with the claim loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from penguinmails.config import Settings
from penguinmails.database import DATABASE_ERRORS, transaction_pooled
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.webhooks.guard import client_session
from penguinmails.webhooks.payload import payload
from penguinmails.webhooks.post import post_signed
from penguinmails.webhooks.signing import signing_secrets
from tracker.analytics import AnalyticsUpdates
from tracker.metrics import TrackerMetrics

log = logging.getLogger(__name__)

SQL = load("tracker")

_DB_ERRORS = DATABASE_ERRORS


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 5.0
    max_delay: float = 3600.0
    max_age: float = 3 * 86400.0  # give a delivery up after this long
    disable_after: float = 5 * 86400.0  # disable an endpoint failing this long without success

    def delay(self, attempt: int) -> float:
        """Seconds before retry after failed attempt number `attempt` (1-based).

        Doubling from `first_delay` up to `max_delay`, with "equal jitter" (half fixed, half
        random) so a receiver that comes back is not hit by every backlog at the same moment.
        """
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** min(attempt - 1, 40))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    gone: bool = False  # 410: the receiver says this endpoint no longer exists


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: TrackerMetrics,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 64,
        per_endpoint: int = 4,
        request_timeout: float = 10.0,
        lease_seconds: float = 120.0,
        poll_interval: float = 1.0,
        grace: float = 5.0,
        owner: str | None = None,
        analytics_interval: float | None = 15.0,
    ) -> None:
        if lease_seconds <= request_timeout * 2:
            raise ValueError("the lease must comfortably outlast a request")
        self._pool = pool
        self._metrics = metrics
        self._keys = server_keys(settings)
        self._allow_private = settings.webhooks.allow_private_targets
        self._pooled = transaction_pooled(settings)
        self.policy = policy or RetryPolicy()
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=request_timeout / 2)
        self._lease = lease_seconds
        self._poll = poll_interval
        self._grace = grace
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._inflight: dict[int, tuple[asyncio.Task[None], asyncpg.Record]] = {}
        self._kick = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._next_retry = float("inf")  # loop time of the soonest retry this process set
        self._session: aiohttp.ClientSession | None = None
        # analytics.updated runs beside the claim loop (None: not in this process).
        self.analytics = (
            AnalyticsUpdates(pool, interval=analytics_interval)
            if analytics_interval is not None
            else None
        )
        self._side_error: BaseException | None = None
        metrics.webhook_in_flight.set_function(lambda: len(self._inflight))

    def stop(self) -> None:
        """Stop claiming; requests in flight get `grace` seconds, then run() returns."""
        self._stopping = True
        self._stop_requested.set()
        self._kick.set()

    async def run(self) -> None:
        """Deliver until stop(); the analytics.updated loop runs alongside and stops with it.

        If that loop dies of a bug, the dispatcher stops too and run() raises its error, so
        the process fails visibly instead of going on without it.
        """
        async with client_session(
            allow_private=self._allow_private, limit=self._concurrency
        ) as session:
            self._session = session
            side = self._start_analytics()
            listener = await self._listen()
            try:
                await self._claim_loop()
            finally:
                deadline = asyncio.get_running_loop().time() + self._grace
                await self._drain()
                if side is not None:
                    await self._stop_side(side, deadline)
                if listener is not None:
                    await self._unlisten(listener)
        log.info("dispatcher stopped", extra={"action": "dispatcher_stopped", "owner": self.owner})
        if self._side_error is not None:
            raise self._side_error

    def _start_analytics(self) -> asyncio.Task[None] | None:
        if self.analytics is None:
            return None
        task = asyncio.create_task(
            self.analytics.run(self._stop_requested), name="analytics-updated"
        )
        task.add_done_callback(self._side_done)
        return task

    def _side_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._side_error = task.exception()
        log.error(
            "a dispatcher task failed; stopping",
            exc_info=self._side_error,
            extra={"action": "dispatcher_failed", "task": task.get_name()},
        )
        self.stop()

    async def _stop_side(self, task: asyncio.Task[None], deadline: float) -> None:
        """It saw stop() and is finishing its statement; cancelled if that outlasts grace."""
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait([task], timeout=remaining)
        for late in pending:
            late.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # -- waking up -----------------------------------------------------------------------------

    def _notified(self, *_: object) -> None:
        self._kick.set()

    async def _listen(self) -> asyncpg.pool.PoolConnectionProxy | None:
        """A pooled connection kept for LISTEN; without one we still poll."""
        if self._pooled:
            # Through a transaction pooler the LISTEN would stay on a server session that
            # goes on to serve other clients; notifications would go astray.
            log.info(
                "behind a transaction pooler: not listening for webhooks, polling every %ss",
                self._poll,
                extra={"action": "listen", "poll_interval": self._poll},
            )
            return None
        try:
            conn = await self._pool.acquire()
        except _DB_ERRORS as exc:
            log.warning(
                "cannot LISTEN; polling only", extra={"action": "listen", "error": str(exc)}
            )
            return None
        try:
            await conn.add_listener("penguinmails_webhooks", self._notified)
        except _DB_ERRORS as exc:
            log.warning(
                "cannot LISTEN; polling only", extra={"action": "listen", "error": str(exc)}
            )
            await self._pool.release(conn)
            return None
        return conn

    async def _unlisten(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.remove_listener("penguinmails_webhooks", self._notified)
        with contextlib.suppress(*_DB_ERRORS):
            await self._pool.release(conn)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(0.0, min(self._poll, self._next_retry - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), timeout)
        self._kick.clear()
        if loop.time() >= self._next_retry:
            self._next_retry = float("inf")

    # -- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        backoff = 0.1
        while not self._stopping:
            free = self._concurrency - len(self._inflight)
            try:
                if loop.time() >= next_sweep:
                    await self._pool.execute(SQL["release_stale_deliveries"])
                    next_sweep = loop.time() + self._lease / 4
                rows = []
                if free > 0:
                    rows = await self._pool.fetch(
                        SQL["claim_deliveries"], free, self.owner, self._per_endpoint, self._lease
                    )
            except _DB_ERRORS as exc:
                log.warning(
                    "claiming webhook deliveries failed; will retry",
                    extra={"action": "claim_deliveries", "error": str(exc)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.1
            for row in rows:
                task = asyncio.create_task(self._deliver(row), name=f"webhook-{row['id']}")
                self._inflight[row["id"]] = (task, row)
                task.add_done_callback(lambda _: self._kick.set())
            await self._wait()

    async def _drain(self) -> None:
        tasks = [task for task, _ in self._inflight.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._inflight:  # cut short: give the rows back untried
            rows = [row for _, row in self._inflight.values()]
            try:
                await self._pool.execute(
                    SQL["release_deliveries"],
                    [r["id"] for r in rows],
                    [r["lease_token"] for r in rows],
                )
                self._metrics.webhook_deliveries.labels("released").inc(len(rows))
            except _DB_ERRORS as exc:
                log.warning(
                    "could not release deliveries; their leases will expire",
                    extra={"action": "release_deliveries", "error": str(exc)},
                )
            self._inflight.clear()

    # -- delivering ----------------------------------------------------------------------------

    async def _deliver(self, row: asyncpg.Record) -> None:
        started = time.perf_counter()
        try:
            attempt = await self._attempt(row)
            self._metrics.webhook_seconds.observe(time.perf_counter() - started)
            await self._finish(row, attempt)
        except asyncio.CancelledError:
            raise  # drain() releases the row
        except Exception:  # a bug: the lease expires and the delivery is retried later
            log.exception(
                "webhook delivery crashed",
                extra={"action": "deliver_webhook", "delivery": row["id"]},
            )
        self._inflight.pop(row["id"], None)

    async def _attempt(self, row: Mapping[str, Any]) -> Attempt:
        assert self._session is not None
        try:
            secrets = signing_secrets(
                row["secret_sealed"], row["previous_secret_sealed"], self._keys
            )
        except ValueError as exc:
            return Attempt(ok=False, error=f"cannot sign: {exc}")
        answer = await post_signed(
            self._session,
            row["url"],
            payload(row),
            webhook_id=row["public_id"],
            secrets=secrets,
            allow_private=self._allow_private,
            timeout=self._timeout,
        )
        code = answer.status_code
        if code is None:
            return Attempt(ok=False, error=answer.error)
        if answer.ok:
            return Attempt(ok=True, status_code=code)
        error = f"HTTP {code}"
        if 300 <= code < 400:
            error += " (redirects are not followed)"
        if answer.excerpt:
            error += ": " + answer.excerpt.decode("utf-8", "replace").strip()
        return Attempt(ok=False, status_code=code, error=error, gone=code == 410)

    async def _finish(self, row: Mapping[str, Any], attempt: Attempt) -> None:
        """Write the outcome; retried briefly if the database hiccups (else the lease expires
        and the delivery is sent again, which receivers dedupe by webhook-id)."""
        for pause in (0.1, 0.5, 2.0, 5.0, None):
            try:
                await self._record(row, attempt)
                return
            except _DB_ERRORS as exc:
                if pause is None:
                    log.error(
                        "could not record a webhook outcome",
                        extra={
                            "action": "record_delivery",
                            "delivery": row["id"],
                            "error": str(exc),
                        },
                    )
                    return
                await asyncio.sleep(pause)

    async def _record(self, row: Mapping[str, Any], attempt: Attempt) -> None:
        if attempt.ok:
            await self._pool.execute(
                SQL["delivery_succeeded"], row["id"], row["lease_token"], attempt.status_code
            )
            self._metrics.webhook_deliveries.labels("delivered").inc()
            return
        delay = self.policy.delay(row["attempts"] + 1)
        result = await self._pool.fetchrow(
            SQL["delivery_failed"],
            row["id"],
            row["lease_token"],
            attempt.status_code,
            (attempt.error or "")[:1000],
            delay,
            self.policy.max_age,
            attempt.gone,
        )
        if result is None:
            return  # the lease had passed to another dispatcher; its outcome stands
        outcome = "failed" if result["status"] == "failed" else "retry"
        self._metrics.webhook_deliveries.labels(outcome).inc()
        log.info(
            "webhook delivery failed",
            extra={
                "action": "deliver_webhook",
                "delivery": row["id"],
                "webhook": row["webhook_id"],
                "attempt": row["attempts"] + 1,
                "outcome": outcome,
                "error": attempt.error,
                "retry_in": round(delay, 3),
            },
        )
        if outcome == "retry":
            due = asyncio.get_running_loop().time() + delay
            self._next_retry = min(self._next_retry, due)
        if attempt.gone:
            await self._disable(row["webhook_id"], "the endpoint answered 410 Gone")
        elif result["failing_for"] >= self.policy.disable_after:
            days = result["failing_for"] / 86400
            await self._disable(row["webhook_id"], f"every attempt failed for {days:.1f} days")

    async def _disable(self, webhook_id: int, reason: str) -> None:
        event_id = await self._pool.fetchval(SQL["disable_endpoint"], webhook_id, reason)
        if event_id is not None:
            self._metrics.webhooks_disabled.inc()
            log.warning(
                "webhook endpoint disabled",
                extra={"action": "disable_webhook", "webhook": webhook_id, "reason": reason},
            )
