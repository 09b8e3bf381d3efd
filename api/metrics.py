"""What the API exposes on /metrics: requests by operation and status, and their latency.

The label is the route's template (`/api/v1/campaigns/{id}`), never the raw path, so ids
in URLs cannot multiply the series. The registry is served on `[api] metrics_listen`
(penguinmails.observability.ops_app), not on the public listener.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiMetrics:
    """One app's request counters, in a registry of its own (several apps share a process
    in tests and under `penguinmails up`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "penguinmails_api_requests",
            "Requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "penguinmails_api_request_seconds",
            "Time to answer, by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            self.requests.labels(request.method, route, str(status)).inc()
            self.seconds.labels(route).observe(time.perf_counter() - started)


METRICS = web.AppKey("api_metrics", ApiMetrics)
