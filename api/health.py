"""Liveness for load balancers and systemd: the process answers and the database does."""

from __future__ import annotations

from api.envelope import ApiError
from api.models import Health
from api.routing import API, Call
from penguinmails.queries import load

SQL = load("api")


@API.route(
    "GET",
    "/health",
    summary="The API and its database answer",
    tag="Health",
    response=Health,
    auth=False,
)
async def health(call: Call) -> Health:
    try:
        await call.pool.fetchval(SQL["health"], timeout=5)
    except Exception as exc:  # any failure to answer is "unavailable", not a 500
        raise ApiError(503, "UNAVAILABLE", f"database unavailable: {type(exc).__name__}") from None
    return Health(status="ok", database="ok")
