"""`penguinmails mta`: run a worker until SIGTERM or SIGINT, then drain within a bound."""

from __future__ import annotations

import asyncio
import logging
import signal

from mta.worker import Worker
from penguinmails.config import Settings
from penguinmails.database import create_pool, database_url
from penguinmails.migrations import pending
from penguinmails.observability import ops_app, start_ops_server
from penguinmails.systemd import notify

log = logging.getLogger(__name__)


class PendingMigrations(Exception):
    pass


async def serve(settings: Settings) -> None:
    url = await asyncio.to_thread(database_url, settings)
    pool = await create_pool(url, settings.database.pool_min, settings.database.pool_max)
    try:
        async with pool.acquire() as conn:
            waiting = await pending(conn)
        if waiting:
            raise PendingMigrations(
                f"{len(waiting)} migration(s) pending ({waiting[0].name} first): "
                "run `penguinmails migrate` first"
            )
        worker = Worker(pool, settings, database_url=url)

        def stop() -> None:
            notify("STOPPING=1")
            worker.stop()

        install_stop_signals(stop)
        ops = None
        if settings.mta.metrics_listen:
            app = ops_app(pool, worker.metrics.registry, lambda: worker.metrics.refresh(pool))
            ops = await start_ops_server(app, settings.mta.metrics_listen)
        log.info(
            "mta started",
            extra={
                "action": "mta_start",
                "owner": worker.owner,
                "metrics": settings.mta.metrics_listen or None,
            },
        )
        try:
            running = asyncio.create_task(worker.run(), name="mta-worker")
            notify("READY=1")
            await running
        finally:
            if ops is not None:
                await ops.cleanup()
    finally:
        await pool.close()


def install_stop_signals(stop: object) -> None:
    """First SIGTERM/SIGINT drains gracefully; a second one cancels the main task."""
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
            stop()  # type: ignore[operator]
        elif main is not None:
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handler, signum)
