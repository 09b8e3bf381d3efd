"""Webhook endpoints as their owners manage them: stored with a sealed secret, their URL
passed by the address guard, their subscriptions checked. The API's webhook routes sit on
these functions; the tracker's dispatcher reads the same rows (with their secrets) in its own
claim query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

import asyncpg
from pydantic import BaseModel, ConfigDict

from penguinmails.config import Settings
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.webhooks import InvalidEndpoint
from penguinmails.webhooks.guard import validate_url
from penguinmails.webhooks.signing import check_secret, generate_secret, seal

SQL = load("penguinmails.webhooks")

# Every event type a webhook may carry, each described with a sample in docs/webhooks.md
# (tests/docs/test_webhooks.py holds the two together): the product documentation's list,
# then the outcomes and engagement this system also records. goal.converted and
# revenue.recorded are listed and subscribable; nothing records them yet. Subscriptions may
# also name future types, a prefix pattern such as "email.*", or "*" for everything.
EVENT_TYPES = (
    "campaign.created",
    "campaign.sent",
    "campaign.completed",
    "email.sent",
    "email.delivered",
    "email.opened",
    "email.clicked",
    "analytics.updated",
    "goal.converted",
    "revenue.recorded",
    "email.deferred",
    "email.bounced",
    "email.complained",
    "email.unsubscribed",
    "email.replied",
    "email.auto_replied",
    "email.received",
    "email.suppressed",
    "email.failed",
    "email.cancelled",
    "email.rescheduled",
    "delivery.throttled",
    "sending.paused",
    "ab_test.decided",
    "webhook.disabled",
    "domain.verification_failed",
)
_EVENT_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
ROTATION_OVERLAP_SECONDS = 24 * 3600.0
MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600.0


class Endpoint(BaseModel):
    """An endpoint as shown to its owner: everything but the secret, and no tenant (every
    lookup is made for one). The API's `Webhook` response model is this class with the
    response's `livemode`, so the fields are listed here only."""

    model_config = ConfigDict(frozen=True)

    id: str
    url: str
    description: str
    events: list[str]
    active: bool
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Endpoint:
        return cls(**{name: row[name] for name in cls.model_fields})


def check_events(events: Sequence[str] | None) -> list[str]:
    """Subscribed event types, deduplicated in order; empty means every event."""
    if events is None:
        return []
    if isinstance(events, str) or len(events) > 64:
        raise InvalidEndpoint("events", "must be a list of at most 64 event types")
    out: list[str] = []
    for i, name in enumerate(events):
        if not isinstance(name, str) or not _EVENT_PATTERN.match(name):
            raise InvalidEndpoint(f"events[{i}]", "must be an event type such as email.opened")
        if name not in out:
            out.append(name)
    return out


Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def create_endpoint(
    conn: Conn,
    tenant_id: int,
    url: str,
    events: Sequence[str] | None = None,
    secret: str | None = None,
    *,
    settings: Settings,
    description: str = "",
) -> tuple[Endpoint, str]:
    """Store a new endpoint; returns it and its secret, which is shown this once."""
    checked_url = await validate_url(url, allow_private=settings.webhooks.allow_private_targets)
    subscribed = check_events(events)
    secret = generate_secret() if secret is None else check_secret(secret)
    if len(description) > 500:
        raise InvalidEndpoint("description", "must be at most 500 characters")
    row = await conn.fetchrow(
        SQL["insert_endpoint"],
        tenant_id,
        checked_url,
        description,
        subscribed,
        seal(secret, server_keys(settings)),
    )
    assert row is not None
    return Endpoint.from_row(row), secret


async def list_endpoints(
    conn: Conn, tenant_id: int, *, limit: int | None = None, after: str | None = None
) -> list[Endpoint]:
    """A tenant's endpoints, newest first; `after` (an endpoint id) pages on past it, and a
    None `limit` gives all of them."""
    rows = await conn.fetch(SQL["list_endpoints"], tenant_id, after, limit)
    return [Endpoint.from_row(r) for r in rows]


async def get_endpoint(conn: Conn, tenant_id: int, endpoint_id: str) -> Endpoint | None:
    row = await conn.fetchrow(SQL["get_endpoint"], tenant_id, endpoint_id)
    return Endpoint.from_row(row) if row else None


async def update_endpoint(
    conn: asyncpg.Connection,
    tenant_id: int,
    endpoint_id: str,
    *,
    settings: Settings,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
    active: bool | None = None,
) -> Endpoint | None:
    """Change what is given (None keeps a field); None when there is no such endpoint.

    Deactivating cancels the endpoint's pending deliveries in the same transaction;
    re-activating clears its failure record.
    """
    if url is not None:
        url = await validate_url(url, allow_private=settings.webhooks.allow_private_targets)
    subscribed = None if events is None else check_events(events)
    if description is not None and len(description) > 500:
        raise InvalidEndpoint("description", "must be at most 500 characters")
    async with conn.transaction():
        row = await conn.fetchrow(
            SQL["update_endpoint"], tenant_id, endpoint_id, url, subscribed, description, active
        )
        if row is not None and active is False:
            await conn.execute(SQL["cancel_pending_deliveries"], row["pk"], "endpoint disabled")
    return Endpoint.from_row(row) if row else None


async def delete_endpoint(conn: Conn, tenant_id: int, endpoint_id: str) -> bool:
    """Delete an endpoint and its outbox rows; False when there was no such endpoint."""
    return await conn.fetchval(SQL["delete_endpoint"], tenant_id, endpoint_id) is not None


class Rotation(NamedTuple):
    endpoint: Endpoint
    secret: str
    # Until then the old secret signs too; at once (now) for an overlap of 0.
    previous_secret_expires_at: datetime


async def rotate(
    conn: Conn,
    tenant_id: int,
    endpoint_id: str,
    *,
    settings: Settings,
    secret: str | None = None,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
) -> Rotation | None:
    """Give an endpoint a new secret (returned, shown once); None when there is no such endpoint.

    For `overlap_seconds` requests carry a signature under the old secret too, so a receiver
    can deploy the new one without rejecting anything in between. 0 ends the old secret at
    once (it leaked); more than a week would keep a secret meant to be retired alive for too
    long.
    """
    if not 0 <= overlap_seconds <= MAX_ROTATION_OVERLAP_SECONDS:
        raise InvalidEndpoint(
            "overlap_seconds", f"must be between 0 and {MAX_ROTATION_OVERLAP_SECONDS:g}"
        )
    secret = generate_secret() if secret is None else check_secret(secret)
    row = await conn.fetchrow(
        SQL["rotate_secret"],
        tenant_id,
        endpoint_id,
        seal(secret, server_keys(settings)),
        overlap_seconds,
    )
    if row is None:
        return None
    return Rotation(Endpoint.from_row(row), secret, row["previous_secret_expires_at"])


async def rotate_secret(
    conn: Conn,
    tenant_id: int,
    endpoint_id: str,
    *,
    settings: Settings,
    secret: str | None = None,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
) -> str | None:
    """`rotate`, for a caller that wants only the new secret."""
    done = await rotate(
        conn,
        tenant_id,
        endpoint_id,
        settings=settings,
        secret=secret,
        overlap_seconds=overlap_seconds,
    )
    return done.secret if done is not None else None


async def list_deliveries(
    conn: Conn,
    tenant_id: int,
    endpoint_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Recent deliveries of an endpoint, newest first, of one `status` if given; `before`
    pages on by the delivery's key (`pk` in each row, which the caller keeps inside its
    cursor)."""
    rows = await conn.fetch(SQL["list_deliveries"], tenant_id, endpoint_id, before, limit, status)
    return [dict(r) for r in rows]


async def retry_delivery(
    conn: Conn, tenant_id: int, endpoint_id: str, delivery_id: str
) -> dict[str, Any] | None:
    """Make one failed or cancelled delivery due now (see the query for what stays as it
    was). The row as it is after, with `active` (the endpoint's) and `retried` (whether this
    call re-queued it); None: no such delivery of this tenant's endpoint."""
    row = await conn.fetchrow(SQL["retry_delivery"], tenant_id, endpoint_id, delivery_id)
    return None if row is None else dict(row)
