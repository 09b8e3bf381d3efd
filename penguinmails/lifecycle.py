"""How every long-running role starts and stops, in one place.

Start: connect (the configured URL, or the embedded Postgres), refuse to run on a schema
with pending migrations, tell systemd when serving. Stop: the first SIGTERM or SIGINT asks
the role to drain within its bound (and tells systemd it is stopping); a second one cancels
the main task at once, and should cleanup still be waiting on something after
FORCE_EXIT_SECONDS (a connection a cancelled task still holds, say), ends the process then.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import asyncpg

from penguinmails.config import Settings
from penguinmails.database import configured_pool
from penguinmails.migrations import pending
from penguinmails.systemd import notify

log = logging.getLogger(__name__)


class PendingMigrations(Exception):
    """The database schema is behind this code; `penguinmails migrate` must run first."""


# Young-generation collections every 10,000 new container objects rather than 700: a
# delivery makes dozens (rows, futures, dataclasses), so the default ran one every few
# messages. Measured with `python -m benchmarks mta --quick --messages 10000`, together with
# the freeze below: about 5% less MTA CPU a message.
GC_THRESHOLDS = (10_000, 20, 20)


def settle_heap() -> None:
    """Once a daemon has started: what it has built so far (modules, settings, caches) lives
    as long as the process, so the collector stops walking it on every full collection
    (gc.freeze), and collects the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def require_migrated(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        waiting = await pending(conn)
    if waiting:
        raise PendingMigrations(
            f"{len(waiting)} migration(s) pending ({waiting[0].name} first): "
            "run `penguinmails migrate` first"
        )


@contextlib.asynccontextmanager
async def role_pool(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """A pool on an up-to-date database, and its URL (for a LISTEN connection of its own)."""
    pool, url = await configured_pool(settings)
    try:
        await require_migrated(pool)
        yield pool, url
    finally:
        await pool.close()


FORCE_EXIT_SECONDS = 5.0


def _force_exit() -> None:
    # The cancelled main task did not finish: nothing more is worth waiting for (leased
    # messages go back to the queue when their leases expire).
    print("penguinmails: stopped at once", file=sys.stderr, flush=True)
    os._exit(130)


def install_stop_signals(stop: Callable[[], object]) -> None:
    """First SIGTERM/SIGINT calls `stop` (drain gracefully); a second cancels the main task."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    count = 0

    def handler(signum: int) -> None:
        nonlocal count
        count += 1
        log.info(
            "stop requested", extra={"action": "signal", "signal": signal.Signals(signum).name}
        )
        if count == 1:
            notify("STOPPING=1")
            stop()
        elif main is not None:
            main.cancel()
            loop.call_later(FORCE_EXIT_SECONDS, _force_exit)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handler, signum)
