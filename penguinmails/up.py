"""`penguinmails up`: every role in one process, for a first run and for development.

The embedded Postgres, migrations applied, the capture sink (so nothing leaves the machine),
the MTA in sandbox mode, the tracker with its webhook dispatcher, the API, and inbound when
it is available; each role's `/metrics` on its own `metrics_listen`, as its own process would
serve it. A test API key is made on the first run and kept under the data dir, so the
README's curl commands keep working across restarts. This module is the composition root:
it is the one place outside the CLI that imports several roles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from penguinmails.config import Settings
from penguinmails.database import configured_pool, transaction_pooled
from penguinmails.lifecycle import install_stop_signals
from penguinmails.migrations import migrate
from penguinmails.observability import ops_app, serving
from penguinmails.systemd import notify

if TYPE_CHECKING:
    from api.server import ApiServer
    from mta.worker import Worker
    from tracker.server import Tracker

log = logging.getLogger(__name__)

KEY_FILE = "sandbox-api-key"
SANDBOX_TENANT = "sandbox"


async def sandbox_key(pool: asyncpg.Pool, data_dir: Path) -> str:
    """The test-mode key kept in `<data_dir>/sandbox-api-key`, made anew if it stopped working."""
    from api.auth import principal_for_key
    from api.keys import create_key

    path = data_dir / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        try:
            await principal_for_key(pool, key)
            return key
        except Exception:  # revoked, or a new database: make a new one
            log.info(
                "stored sandbox key no longer valid; creating a new one",
                extra={"action": "sandbox_key"},
            )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant=SANDBOX_TENANT, tier="enterprise", test=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@contextlib.asynccontextmanager
async def _optional_inbound(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Any]:
    try:
        from inbound.server import InboundServer
    except ImportError:
        yield None
        return
    async with InboundServer(pool, settings) as server:
        yield server


@contextlib.asynccontextmanager
async def _metrics(
    pool: asyncpg.Pool,
    settings: Settings,
    api: ApiServer,
    tracker: Tracker,
    worker: Worker,
    inbound: Any,
) -> AsyncIterator[list[tuple[str, str]]]:
    """Serve each role's metrics on its own address; yield (role, URL) for those served."""
    from mta.daemon import metrics_app

    roles = [
        ("api", api.ops_app(), settings.api.metrics_listen),
        ("tracker", tracker.ops_app(), settings.tracker.metrics_listen),
        ("mta", metrics_app(worker, pool), settings.mta.metrics_listen),
    ]
    if inbound is not None:
        app = ops_app(pool, inbound.metrics.registry, role="inbound")
        roles.append(("inbound", app, settings.inbound.metrics_listen))
    served: list[tuple[str, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        for role, app, listen in roles:
            url = await stack.enter_async_context(serving(app, listen))
            if url is not None:
                served.append((role, url))
        yield served


async def run(settings: Settings) -> None:
    from api.server import ApiServer
    from mta.sink import start_sink
    from mta.worker import Worker
    from tracker.server import Tracker

    # Every message to the capture sink; webhooks to this machine allowed, so a receiver
    # on localhost can be tried (the production roles still refuse private targets).
    settings = settings.model_copy(
        update={
            "mta": settings.mta.model_copy(
                update={"sandbox": True, "require_verified_domains": False}
            ),
            "webhooks": settings.webhooks.model_copy(update={"allow_private_targets": True}),
        }
    )
    pool, url = await configured_pool(settings)
    stop = asyncio.Event()
    try:
        async with pool.acquire() as conn:
            await migrate(conn, session_lock=not transaction_pooled(settings))
        key = await sandbox_key(pool, settings.paths.data_dir)
        sink = await start_sink(pool, settings)
        worker = Worker(pool, settings, database_url=url)

        def stop_all() -> None:
            log.info(
                "stopping: finishing in-flight work (Ctrl-C again to quit at once)",
                extra={"action": "up_stop"},
            )
            stop.set()
            worker.stop()

        install_stop_signals(stop_all)
        try:
            async with (
                Tracker(pool, settings) as tracker,
                ApiServer(pool, settings) as api,
                _optional_inbound(pool, settings) as inbound,
                _metrics(pool, settings, api, tracker, worker, inbound) as metrics,
            ):
                mta = asyncio.create_task(worker.run(), name="mta-worker")
                _banner(settings, api.url, tracker.url, inbound is not None, key, metrics)
                notify("READY=1")
                try:
                    serving = asyncio.create_task(tracker.run_until(stop), name="tracker")
                    done, _ = await asyncio.wait(
                        [mta, serving], return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()  # a role that died takes `up` down with its error
                finally:
                    notify("STOPPING=1")
                    stop.set()
                    worker.stop()
                    await asyncio.gather(mta, return_exceptions=True)
        finally:
            sink.close()
            await sink.wait_closed()
    finally:
        await pool.close()


def _banner(
    settings: Settings,
    api: str,
    tracker: str,
    inbound: bool,
    key: str,
    metrics: list[tuple[str, str]],
) -> None:
    lines = [
        "PenguinMails is up.",
        f"  API:           {api}/api/v1   (OpenAPI: {api}/api/v1/openapi.json)",
        f"  API reference: {api}/api/v1/docs/",
        f"  sandbox inbox: {api}/sandbox",
        f"  tracker:       {tracker}",
        f"  capture sink:  smtp://{settings.mta.sandbox_sink} (nothing leaves this machine)",
    ]
    if inbound:
        lines.append(f"  inbound:       smtp://{settings.inbound.listen}")
    # Loopback by default: for this machine's Prometheus, not for the world.
    label = "  metrics:       "
    for role, url in metrics:
        lines.append(f"{label}{url}/metrics ({role})")
        label = " " * len(label)
    if not metrics:
        lines.append(f"{label}not served (every metrics_listen is empty)")
    database = (settings.database.url and "configured URL") or (
        f"embedded, under {settings.paths.data_dir}"
    )
    lines += [
        f"  database:      {database}",
        f"  test API key:  {key}",
        "  stop:          Ctrl-C",
    ]
    print("\n".join(lines), flush=True)
