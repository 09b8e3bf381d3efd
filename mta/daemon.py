"""`penguinmails mta`: run a worker until SIGTERM or SIGINT, then drain within a bound."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web

from mta.worker import Worker
from penguinmails.config import Settings
from penguinmails.lifecycle import install_stop_signals, role_pool, settle_heap
from penguinmails.observability import ops_app, serving
from penguinmails.systemd import notify

log = logging.getLogger(__name__)


def metrics_app(worker: Worker, pool: asyncpg.Pool) -> web.Application:
    """`/metrics` and `/healthz` for `[mta] metrics_listen`; queue depth is read on scrape."""
    return ops_app(pool, worker.metrics.registry, lambda: worker.metrics.refresh(pool), role="mta")


async def serve(settings: Settings, *, supervisor: int | None = None) -> None:
    """One MTA process; `supervisor`: the pid of the `mta --processes N` that started it."""
    if supervisor is not None:
        from mta.supervisor import follow_parent

        follow_parent(supervisor)
    async with role_pool(settings) as (pool, url):
        worker = Worker(pool, settings, database_url=url)
        install_stop_signals(worker.stop)
        async with serving(metrics_app(worker, pool), settings.mta.metrics_listen) as metrics:
            log.info(
                "mta started",
                extra={"action": "mta_start", "owner": worker.owner, "metrics": metrics},
            )
            settle_heap()
            running = asyncio.create_task(worker.run(), name="mta-worker")
            if supervisor is not None and metrics:
                from mta.supervisor import METRICS_KEY

                # The supervisor serves every worker's metrics on the configured address.
                notify(f"READY=1\n{METRICS_KEY}={metrics}")
            else:
                notify("READY=1")
            await running
