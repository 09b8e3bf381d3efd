"""Liveness for load balancers and systemd: the process answers and the database does.

The same check as `/healthz` (penguinmails.observability): up or down, never why; the reason
goes to the log.
"""

from __future__ import annotations

from api.errors import ApiError
from api.models import Health
from api.routing import API, Call
from penguinmails.observability import HEALTH


@API.route(
    "GET",
    "/health",
    summary="The API and its database answer",
    tag="Health",
    response=Health,
    auth=False,
)
async def health(call: Call[None, None]) -> Health:
    if not await call.request.app[HEALTH].ok():
        raise ApiError(503, "UNAVAILABLE", "service unavailable")
    return Health(status="ok", database="ok")
