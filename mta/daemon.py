"""`penguinmails mta`: run a worker until SIGTERM or SIGINT, then drain within a bound."""

from __future__ import annotations

import asyncio
import logging

from mta.worker import Worker
from penguinmails.config import Settings
from penguinmails.lifecycle import install_stop_signals, role_pool
from penguinmails.observability import ops_app, start_ops_server
from penguinmails.systemd import notify

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    async with role_pool(settings) as (pool, url):
        worker = Worker(pool, settings, database_url=url)
        install_stop_signals(worker.stop)
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
