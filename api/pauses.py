"""Sending paused by the circuit breaker at the scope of a sending domain or a whole tenant.

The breaker (mta/worker.py, `sending_breaker` in migration 0031) pauses what sends badly at
four scopes. Campaigns and identities carry their own pause (`POST /campaigns/{id}/resume`,
`POST /identities/{id}/resume`); a sending domain or a tenant is paused by a hold listed here.
Its waiting messages are 'paused' with `held_reason` "sending paused", and so is every
message queued for it meanwhile; resuming is explicit: `POST /sending/pauses/{id}/resume`
lets them go (those of a campaign still paused stay with it).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.errors import not_found
from api.models import Owned, Response
from api.routing import API, Call
from penguinmails.queries import load

SQL = load("api", "pauses.sql")


class SendingPause(Owned):
    id: str
    scope: str = Field(description="domain or tenant")
    domain: str | None = Field(description="The paused From domain (scope domain).")
    reason: str
    created_at: datetime


class SendingPauses(Response):
    items: list[SendingPause]


class ResumedPause(SendingPause):
    released: int = Field(description="Messages that may go again.")


@API.route(
    "GET",
    "/sending/pauses",
    summary="Sending domains and tenant-wide sending the circuit breaker paused",
    tag="Sending",
    tier="starter",
    response=SendingPauses,
)
async def list_pauses(call: Call[None, None]) -> SendingPauses:
    rows = await call.pool.fetch(SQL["list_pauses"], call.principal.tenant_id)
    return SendingPauses(
        items=[
            SendingPause(
                id=r["public_id"],
                scope=r["scope"],
                domain=r["key"] or None,
                reason=r["reason"],
                created_at=r["created_at"],
            )
            for r in rows
        ]
    )


@API.route(
    "POST",
    "/sending/pauses/{id}/resume",
    summary="Lift a pause: its waiting messages go again",
    tag="Sending",
    tier="starter",
    response=ResumedPause,
    errors=(404,),
)
async def resume_pause(call: Call[None, None]) -> ResumedPause:
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["lift_pause"], tenant, call.path_id("pause", "Pause"))
        if row is None:
            raise not_found("Pause")
        status = await conn.execute(SQL["release_pause"], tenant, row["scope"], row["key"])
    return ResumedPause(
        id=row["public_id"],
        scope=row["scope"],
        domain=row["key"] or None,
        reason=row["reason"],
        created_at=row["created_at"],
        released=int(status.split()[-1]),
    )
