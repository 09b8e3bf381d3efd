"""`penguinmails api`: the control API under /api/v1, on aiohttp with orjson.

`create_app` builds the application on a pool (tests host several on one database);
`ApiServer` runs one on a TCP site; `serve` is the command: refuse pending migrations, listen
on `[api] listen` (and serve `/metrics` on `[api] metrics_listen`, never on the public
listener), run until SIGTERM or SIGINT, then stop accepting, let requests in flight finish for
up to REQUEST_GRACE seconds, and close the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType

import asyncpg
import orjson
from aiohttp import web

# Route modules register their operations on import.
from api import (  # noqa: F401
    ai,
    analytics,
    billing,
    campaigns,
    connectors,
    contacts,
    conversions,
    domains,
    health,
    identities,
    inbound,
    keys,
    messages,
    oauth,
    pauses,
    replies,
    sandbox,
    senders,
    sends,
    sequences,
    templates,
    webhooks,
    zapier,
)
from api.auth import LoginTokens
from api.dashboard import add_dashboard
from api.docs import add_docs
from api.envelope import MAX_BODY, envelope_middleware
from api.index import add_index
from api.metrics import METRICS, ApiMetrics
from api.openapi import build
from api.ratelimit import WINDOW_SECONDS, RateLimiter
from api.routing import API, STATE, State, install
from penguinmails.config import Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS, replica_pool
from penguinmails.deliverability import Reverifier
from penguinmails.lifecycle import install_stop_signals, role_pool
from penguinmails.observability import HEALTH, DatabaseHealth, healthz, ops_app, serving
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.sequences import INTERVAL as SEQUENCE_INTERVAL
from penguinmails.sequences import Scheduler
from penguinmails.systemd import notify
from penguinmails.tokens import LinkSigner

log = logging.getLogger(__name__)
SQL = load("api")

PREFIX = "/api/v1"
# The product documentation gives its base URL as .../v1/ and its examples as /api/v1/...:
# both serve the same handlers and the same OpenAPI document (which names /api/v1).
ALIAS = "/v1"
# 10,000 recipients with personalization fit comfortably, and so do a send's 25 MB of
# attachments in base64 (a third larger); a body past this is refused (413) before it is
# read into memory.
MAX_BODY_BYTES = 36 * 1024 * 1024
REQUEST_GRACE = 5.0
PRUNE_INTERVAL = 600.0
OPENAPI = web.AppKey("openapi", bytes)


async def openapi_document(request: web.Request) -> web.Response:
    # Public and credential-free, so any origin may load it (API explorers, code generators).
    return web.Response(
        body=request.app[OPENAPI],
        content_type="application/json",
        headers={"Access-Control-Allow-Origin": "*"},
    )


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Drop ended rate-limit windows, day-old idempotency keys and OAuth codes, and end
    subscriptions past their period, now and then."""
    state = app[STATE]

    async def loop() -> None:
        while True:
            try:
                await state.limiter.prune()
                await state.pool.execute(SQL["prune_idempotency_keys"])
                await state.pool.execute(oauth.SQL["prune_codes"])
                await state.pool.execute(connectors.SQL["prune_deliveries"])
                await billing.expire(state.pool)  # subscriptions past their period's end
            except DATABASE_ERRORS as exc:
                log.warning("housekeeping failed", extra={"action": "api_prune", "error": str(exc)})
            await asyncio.sleep(PRUNE_INTERVAL)

    task = asyncio.create_task(loop(), name="api-housekeeping")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _sequence_scheduler(
    interval: float | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Sequences' scheduler (penguinmails.sequences), here because the API is the role that
    creates sequences and enrolments and already runs background work; every API process
    may run one (their batches skip each other's locked rows). None: not run (tests that
    drive it by hand). On shutdown a batch in flight commits before the pool closes."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        if interval is None:
            yield
            return
        scheduler = Scheduler(app[STATE].pool, interval)
        scheduler.start()
        yield
        await scheduler.stop()

    return run


def _domain_reverifier(
    enabled: bool,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Sending domains' DNS re-checks (penguinmails.deliverability.Reverifier), here because
    the API is the role whose door reads the result; see the class for why not the MTA."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        if not enabled:
            yield
            return
        reverifier = Reverifier(app[STATE].pool, app[STATE].settings)
        reverifier.start()
        yield
        await reverifier.stop()

    return run


def create_app(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    limits: Mapping[str, int] | None = None,
    window: int = WINDOW_SECONDS,
    max_body: int = MAX_BODY_BYTES,
    sequence_interval: float | None = SEQUENCE_INTERVAL,
    reverify_domains: bool | None = None,
    reader: asyncpg.Pool | None = None,
) -> web.Application:
    metrics = ApiMetrics()
    app = web.Application(
        middlewares=[metrics.middleware, envelope_middleware], client_max_size=max_body
    )
    app[STATE] = State(
        pool=pool,
        settings=settings,
        signer=LoginTokens(settings),
        limiter=RateLimiter(pool, limits, window),
        link_signer=LinkSigner(server_keys(settings)),
        reader=reader,
    )
    app[MAX_BODY] = max_body
    app[OPENAPI] = orjson.dumps(build(API, PREFIX))
    app[METRICS] = metrics
    app[HEALTH] = DatabaseHealth(pool, "api")
    app.router.add_get("/healthz", healthz)
    for prefix in (PREFIX, ALIAS):
        app.router.add_get(f"{prefix}/openapi.json", openapi_document)
        add_docs(app, prefix)
        install(app, prefix)
        inbound.add_downloads(app, prefix)
        connectors.add_routes(app, prefix)
    sandbox.add_page(app)
    add_dashboard(app)
    oauth.add_routes(app)
    add_index(app, PREFIX)
    add_index(app, ALIAS, page=False)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_sequence_scheduler(sequence_interval))
    # By default only where the result gates sending; `domains verify` and
    # GET /api/v1/domains/{domain} check on demand either way.
    if reverify_domains is None:
        reverify_domains = settings.mta.require_verified_domains
    app.cleanup_ctx.append(_domain_reverifier(reverify_domains))
    return app


class ApiServer:
    """One API site; `async with` starts it and shuts it down within REQUEST_GRACE."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, **options: object) -> None:
        self.app = create_app(pool, settings, **options)  # type: ignore[arg-type]
        self.settings = settings
        self._runner = web.AppRunner(
            self.app, shutdown_timeout=REQUEST_GRACE, access_log=None, handle_signals=False
        )
        self.port = 0

    @property
    def url(self) -> str:
        host, _ = split_hostport(self.settings.api.listen)
        return f"http://{host}:{self.port}"

    async def start(self) -> ApiServer:
        host, port = split_hostport(self.settings.api.listen)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        await self._runner.cleanup()

    def ops_app(self) -> web.Application:
        """`/metrics` and `/healthz` for `[api] metrics_listen`."""
        return ops_app(
            self.app[STATE].pool,
            self.app[METRICS].registry,
            role="api",
            health=self.app[HEALTH],
        )

    async def __aenter__(self) -> ApiServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# What reads from `[database] replica_url` when one is set (the handlers use `call.reader`):
# searches and analytics, which tolerate the replication delay. Everything else, and every
# write, stays on the primary.
REPLICA_ROUTES = (
    "GET /messages",
    "GET /events",
    "GET /analytics/campaigns/{id}",
    "GET /analytics/tags/{tag}",
)


@contextlib.asynccontextmanager
async def _replica(settings: Settings) -> AsyncIterator[asyncpg.Pool | None]:
    reader = await replica_pool(settings)
    if reader is not None:
        log.info(
            "searches and analytics read from the replica",
            extra={"action": "replica", "routes": list(REPLICA_ROUTES)},
        )
    try:
        yield reader
    finally:
        if reader is not None:
            await reader.close()


async def serve(settings: Settings) -> None:
    """Run the API until SIGTERM or SIGINT, then stop within REQUEST_GRACE."""
    async with role_pool(settings) as (pool, _), _replica(settings) as reader:
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        async with (
            ApiServer(pool, settings, reader=reader) as server,
            serving(server.ops_app(), settings.api.metrics_listen) as metrics,
        ):
            log.info(
                "api started",
                extra={"action": "api_start", "listen": server.url, "metrics": metrics},
            )
            notify("READY=1")
            await stop.wait()
            log.info("api stopping", extra={"action": "api_stop"})
    log.info("api stopped", extra={"action": "api_stopped"})
