"""`penguinmails tracker`: the HTTP face recipients' mail clients hit, and the webhook dispatcher.

Routes: `GET /o/<token>.gif` (open pixel), `GET /c/<token>` (click: 302 to the signed URL),
`GET /u/<token>` (a page with a button; changes nothing), `POST /u/<token>` (RFC 8058
one-click or the page's button: unsubscribes), `/healthz`. A token that does not verify gets
404 and nothing else: never a redirect, so the tracker is no open redirect. `/metrics` is
served on `[tracker] metrics_listen` only (loopback by default), not to the public.

`Tracker` holds one process's parts in one place (the HTTP site, the hit recorder, the
webhook dispatcher) so that start and shutdown order are visible together: on close it stops
accepting and lets requests finish, then flushes the hit buffer, then stops the dispatcher,
all within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import asyncpg
import yarl
from aiohttp import web

from penguinmails.config import Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS
from penguinmails.lifecycle import install_stop_signals, role_pool
from penguinmails.links import Links
from penguinmails.observability import HEALTH, DatabaseHealth, healthz, ops_app, serving
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.systemd import notify
from penguinmails.tokens import BadToken, LinkSigner
from tracker import audience, pages
from tracker.classify import client_ip, ip_prefix, machine_reason
from tracker.dispatcher import Dispatcher
from tracker.hits import Hit, HitRecorder
from tracker.metrics import TrackerMetrics

log = logging.getLogger(__name__)

SQL = load("tracker")
SHUTDOWN_GRACE = 10.0  # seconds for the whole shutdown
REQUEST_GRACE = 3.0  # of which requests in flight may take this long


@dataclass
class State:
    pool: asyncpg.Pool
    links: Links
    metrics: TrackerMetrics
    recorder: HitRecorder | None  # None: serve without recording (the benchmark's baseline)


STATE = web.AppKey("tracker_state", State)


def _not_found() -> web.Response:
    return web.Response(status=404, text=pages.NOT_FOUND, headers=pages.NO_CACHE)


def _requester(request: web.Request) -> tuple[str, str | None, str | None, str | None]:
    """User agent, full address, coarse network, and machine reason (if the request alone
    shows one). The full address is for lookups in memory only: only the network is stored."""
    agent = request.headers.get("User-Agent", "")
    ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"))
    return agent, ip, ip_prefix(ip), machine_reason(agent, ip, request.headers)


async def _record(
    state: State,
    request: web.Request,
    kind: str,
    message_id: int,
    link_index: int | None = None,
    url: str | None = None,
) -> None:
    if state.recorder is None or request.method != "GET":  # HEAD probes are not views
        return
    agent, ip, prefix, reason = _requester(request)
    code, name = audience.country(ip)  # from the full address, which goes no further
    await state.recorder.record(
        Hit(
            kind,
            message_id,
            datetime.now(UTC),
            agent,
            prefix,
            reason,
            link_index,
            url,
            device_type=audience.device_type(agent, reason),
            country=name,
            country_code=code,
        )
    )


async def pixel(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token = request.match_info["token"]
    try:
        if not token.endswith(".gif"):
            raise BadToken("no .gif suffix")
        message_id = state.links.open_token(token)
    except BadToken:
        state.metrics.hits.labels("open", "bad_token").inc()
        return _not_found()
    await _record(state, request, "email.opened", message_id)
    state.metrics.hits.labels("open", "ok").inc()
    return web.Response(body=pages.PIXEL, content_type="image/gif", headers=pages.NO_CACHE)


def _safe_target(url: str) -> bool:
    """Signed URLs are ours, but a Location header is still no place for surprises."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return False
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


async def click(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        target = state.links.click_token(request.match_info["token"])
    except BadToken:
        state.metrics.hits.labels("click", "bad_token").inc()
        return _not_found()
    if not _safe_target(target.url):
        state.metrics.hits.labels("click", "bad_token").inc()
        return _not_found()
    await _record(state, request, "email.clicked", target.queue_id, target.index, target.url)
    state.metrics.hits.labels("click", "ok").inc()
    # The signed URL, plus the click's conversion token for the site to report a conversion.
    location = state.links.redirect_url(target, time.time())
    return web.Response(
        status=302,
        headers={"Location": location, "Referrer-Policy": "no-referrer", **pages.NO_CACHE},
    )


async def unsubscribe_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.links.unsubscribe_token(request.match_info["token"])
    except BadToken:
        state.metrics.hits.labels("unsubscribe_page", "bad_token").inc()
        return _not_found()
    state.metrics.hits.labels("unsubscribe_page", "ok").inc()
    return web.Response(text=pages.CONFIRM, content_type="text/html", headers=pages.PAGE_HEADERS)


async def unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click, or the page's button: suppress now, answer when committed."""
    state = request.app[STATE]
    try:
        message_id = state.links.unsubscribe_token(request.match_info["token"])
    except BadToken:
        state.metrics.hits.labels("unsubscribe", "bad_token").inc()
        return _not_found()
    method = "post"
    with contextlib.suppress(ValueError):
        form = await request.post()
        if form.get("List-Unsubscribe") == "One-Click":
            method = "one-click"
    agent, _, prefix, _ = _requester(request)
    try:
        row = await state.pool.fetchrow(SQL["unsubscribe"], message_id, method, agent[:512], prefix)
    except DATABASE_ERRORS as exc:
        state.metrics.hits.labels("unsubscribe", "error").inc()
        log.error("unsubscribe failed", extra={"action": "unsubscribe", "error": str(exc)})
        return web.Response(
            status=503,
            text=pages.UNAVAILABLE,
            content_type="text/html",
            headers={**pages.PAGE_HEADERS, "Retry-After": "60"},
        )
    if row is None:
        state.metrics.hits.labels("unsubscribe", "gone").inc()
        return web.Response(
            status=410, text=pages.GONE, content_type="text/html", headers=pages.PAGE_HEADERS
        )
    state.metrics.hits.labels("unsubscribe", "ok").inc()
    log.info(
        "unsubscribed",
        extra={
            "action": "unsubscribe",
            "queue_id": message_id,
            "method": method,
            "new": bool(row["recorded"]),
        },
    )
    return web.Response(text=pages.DONE, content_type="text/html", headers=pages.PAGE_HEADERS)


def create_app(state: State) -> web.Application:
    # Unsubscribe forms are a few bytes; nothing here needs aiohttp's 1 MiB default.
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    app[HEALTH] = DatabaseHealth(state.pool, "tracker")
    app.router.add_get("/o/{token}", pixel)
    app.router.add_get("/c/{token}", click)
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe)
    app.router.add_get("/healthz", healthz)
    return app


class Tracker:
    """One process's tracker: HTTP site, hit recorder and webhook dispatcher, on a given pool.

    `record=False` serves without writing hits and `dispatch=False` runs no dispatcher (for
    the benchmark's baseline, or a process that only serves); `recorder` and `dispatcher`
    pass options through (batch sizes, retry policy, concurrency).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        record: bool = True,
        dispatch: bool = True,
        recorder: Mapping[str, Any] | None = None,
        dispatcher: Mapping[str, Any] | None = None,
        grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.settings = settings
        self.metrics = TrackerMetrics()
        self.recorder = HitRecorder(pool, self.metrics, **(recorder or {})) if record else None
        self.dispatcher = (
            Dispatcher(pool, settings, self.metrics, **(dispatcher or {})) if dispatch else None
        )
        links = Links(
            LinkSigner(server_keys(settings)),
            settings.tracker.base_url,
            conversion_param=settings.tracker.conversion_param,
        )
        self.pool = pool
        self.app = create_app(State(pool, links, self.metrics, self.recorder))
        self._grace = grace
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.host, self.port = split_hostport(settings.tracker.listen)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> Tracker:
        if self.recorder is not None:
            # The device and country parsers, built once per process before the first hit
            # (a fraction of a second), in a thread so nothing else on the loop waits.
            await asyncio.to_thread(audience.load)
            self._tasks.append(asyncio.create_task(self.recorder.run(), name="hit-recorder"))
        if self.dispatcher is not None:
            self._tasks.append(
                asyncio.create_task(self.dispatcher.run(), name="webhook-dispatcher")
            )
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=REQUEST_GRACE)
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self.close()
            raise
        self.port = self._runner.addresses[0][1]  # the real one when configured as 0
        return self

    def ops_app(self) -> web.Application:
        """`/metrics` and `/healthz` for `[tracker] metrics_listen`."""
        return ops_app(
            self.pool,
            self.metrics.registry,
            lambda: self.metrics.refresh(self.pool),
            role="tracker",
            health=self.app[HEALTH],
        )

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; if a side task dies first, stop and raise its error."""
        waiter = asyncio.create_task(stop.wait(), name="stop-requested")
        try:
            done, _ = await asyncio.wait(
                [waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        for task in done:
            if task is not waiter:
                log.error(
                    "a tracker task stopped unexpectedly",
                    extra={"action": "tracker_failed", "task": task.get_name()},
                )
                task.result()  # raises its error, if it had one
                raise RuntimeError(f"{task.get_name()} stopped unexpectedly")

    async def close(self) -> None:
        """Stop accepting, let requests finish, flush hits, stop the dispatcher: bounded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.recorder is not None:
            self.recorder.close()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self._tasks:
            remaining = max(0.1, deadline - loop.time())
            _, late = await asyncio.wait(self._tasks, timeout=remaining)
            for task in late:
                log.warning(
                    "shutdown bound reached; cancelling",
                    extra={"action": "tracker_stop", "task": task.get_name()},
                )
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for task, result in zip(self._tasks, results, strict=True):
                if isinstance(result, Exception):
                    log.error(
                        "tracker task failed",
                        exc_info=result,
                        extra={"action": "tracker_stop", "task": task.get_name()},
                    )
            self._tasks = []
        if self.recorder is not None and len(self.recorder):
            self.metrics.hits_dropped.inc(len(self.recorder))
            log.error(
                "hits not written before shutdown",
                extra={"action": "tracker_stop", "hits": len(self.recorder)},
            )

    async def __aenter__(self) -> Tracker:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def serve(settings: Settings) -> None:
    """Run the tracker until SIGTERM or SIGINT, then shut down within SHUTDOWN_GRACE."""
    async with role_pool(settings) as (pool, _):
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        async with (
            Tracker(pool, settings) as tracker,
            serving(tracker.ops_app(), settings.tracker.metrics_listen) as metrics,
        ):
            log.info(
                "tracker started",
                extra={
                    "action": "tracker_start",
                    "listen": tracker.url,
                    "base_url": settings.tracker.base_url,
                    "metrics": metrics,
                },
            )
            notify("READY=1")
            await tracker.run_until(stop)
        log.info("tracker stopped", extra={"action": "tracker_stop"})
