"""`analytics.updated`: a campaign's numbers, announced at most once a minute while they move.

A loop owned by the webhook dispatcher runs `emit_analytics_updated` every `interval`
seconds. The statement decides everything in Postgres (which campaigns moved, which were not
announced within the minute, which tracker process announces them), so any number of tracker
processes may run the loop at once and each change is announced once. The event goes out
through the outbox like every other event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load

log = logging.getLogger(__name__)

SQL = load("tracker")


class AnalyticsUpdates:
    """Emits analytics.updated for campaigns whose rollup changed.

    `recent` bounds which campaigns are looked at: those with rollup rows (hourly buckets)
    in the last `recent` seconds. A hit recorded late, after a database outage, carries its
    own time; two hours covers any outage the hit buffer survives.
    """

    def __init__(
        self, pool: asyncpg.Pool, *, interval: float = 15.0, recent: float = 2 * 3600.0
    ) -> None:
        self._pool = pool
        self.interval = interval
        self._recent = recent

    async def emit(self) -> int:
        """One pass: the number of analytics.updated events written."""
        rows = await self._pool.fetch(SQL["emit_analytics_updated"], self._recent)
        if rows:
            log.info(
                "analytics updated",
                extra={"action": "analytics_updated", "campaigns": len(rows)},
            )
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Emit every `interval` seconds until `stop` is set; database errors back off."""
        backoff = self.interval
        while not stop.is_set():
            try:
                await self.emit()
                backoff = self.interval
            except DATABASE_ERRORS as exc:
                log.warning(
                    "emitting analytics.updated failed; will retry",
                    extra={"action": "analytics_updated", "error": str(exc)},
                )
                backoff = min(backoff * 2, 300.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
