"""Searching messages, the event log, and cancelling or rescheduling one message.

Both lists page newest first by public id, in the caller's mode (a test key sees test-mode
rows only: `principal.tenant_id` is the mode's row). Every filter is answered from an index
ending in public_id (migration 0020; tests/api/test_messages.py proves the plans).

A message can be cancelled until it is handed to a receiving server: while queued, deferred
or paused. The row is locked first, so the MTA's claim (FOR UPDATE SKIP LOCKED) passes it by
until the cancel commits; one that is already `sending` is in an SMTP conversation and is
left to finish (409). It can be rescheduled while it waits: queued and not yet due, or
deferred (a due queued message may be claimed any moment). Each change records its event
(`email.cancelled`, `email.rescheduled`) in the same statement.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from api.errors import conflict, not_found, validation_error
from api.models import (
    EventListQuery,
    LogEvent,
    Message,
    MessageEvent,
    MessageListQuery,
    MessageReschedule,
    MessageSummary,
    MessageTracking,
    Page,
)
from api.routing import API, Call, decode_cursor, is_public_id, keyset_page
from penguinmails.events import public_data
from penguinmails.queries import load

SQL = load("api", "messages.sql")
DETAIL_SQL = load("api")

# A public id's time is when its row was inserted; created_at is its transaction's start, so
# an id is never older than its created_at, and newer only by how long the transaction ran
# before the INSERT. `until` bounds the id by this much past it (rows inside the margin are
# checked against created_at): a message whose transaction ran longer than this before
# inserting it is missed by `until`. Sends insert at once; an hour is far beyond them.
UNTIL_MARGIN = timedelta(hours=1)
CANCELLABLE = ("queued", "deferred", "paused")


def id_bound(prefix: str, moment: datetime, *, upper: bool = False) -> str:
    """A bound on the public ids of `prefix` made at `moment` (migration 0013's public_id():
    the prefix, then 12 hex digits of epoch milliseconds, rounded): a millisecond below it, or
    with `upper` a millisecond above, so the rounding never leaves an id outside the range."""
    millis = moment.timestamp() * 1000
    value = math.ceil(millis) + 1 if upper else math.floor(millis) - 1
    return f"{prefix}_{max(value, 0):012x}"


def _filter_id(value: str | None, prefix: str, field: str) -> str | None:
    if value is not None and not is_public_id(value, prefix):
        raise validation_error([{"field": field, "message": f"must be a {prefix}_ id"}])
    return value


def _range(
    prefix: str, since: datetime | None, until: datetime | None
) -> tuple[str | None, str | None]:
    if since is not None and until is not None and since >= until:
        raise validation_error([{"field": "until", "message": "must be after since"}])
    low = id_bound(prefix, since) if since is not None else None
    high = None
    if until is not None:
        latest = datetime.max.replace(tzinfo=UTC)  # past it the margin would overflow
        edge = until + UNTIL_MARGIN if until <= latest - UNTIL_MARGIN else latest
        high = id_bound(prefix, edge, upper=True)
    return low, high


@API.route(
    "GET",
    "/messages",
    summary="Search messages, newest first",
    tag="Sending",
    query=MessageListQuery,
    response=Page[MessageSummary],
)
async def list_messages(call: Call[None, MessageListQuery]) -> Page[MessageSummary]:
    query = call.query
    campaign = _filter_id(query.campaign_id, "campaign", "campaign_id")
    low, high = _range("msg", query.since, query.until)
    rows = await call.reader.fetch(
        SQL["search_messages"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
        query.recipient,
        query.status,
        campaign,
        query.tag,
        query.since,
        query.until,
        low,
        high,
    )
    return keyset_page(Page[MessageSummary], rows, query.limit, lambda r: MessageSummary(**dict(r)))


@API.route(
    "GET",
    "/events",
    summary="The event log, newest first",
    tag="Events",
    query=EventListQuery,
    response=Page[LogEvent],
)
async def list_events(call: Call[None, EventListQuery]) -> Page[LogEvent]:
    query = call.query
    exact = prefix_low = prefix_high = None
    if query.type is not None and query.type.endswith(".*"):
        stem = query.type[:-1]  # "email." .. "email/": every type under email. (C collation)
        prefix_low, prefix_high = stem, stem[:-1] + "/"
    else:
        exact = query.type
    low, high = _range("evt", query.since, query.until)
    rows = await call.reader.fetch(
        SQL["search_events"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
        exact,
        prefix_low,
        prefix_high,
        _filter_id(query.message_id, "msg", "message_id"),
        _filter_id(query.campaign_id, "campaign", "campaign_id"),
        query.since,
        query.until,
        low,
        high,
    )
    return keyset_page(
        Page[LogEvent],
        rows,
        query.limit,
        lambda r: LogEvent(**{**dict(r), "data": public_data(r["data"])}),
    )


async def fetch_message(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, message_id: str
) -> Message | None:
    """A message of the tenant row with its events (what GET /messages/{id} answers)."""
    row = await conn.fetchrow(DETAIL_SQL["get_message"], tenant_id, message_id)
    if row is None:
        return None
    events = await conn.fetch(DETAIL_SQL["message_events"], row["pk"])
    fields = {k: v for k, v in row.items() if k not in ("pk", "settings", "has_html")}
    return Message(
        **fields,
        tracking=_tracking(row["settings"], row["has_html"]),
        events=[MessageEvent(**{**dict(e), "data": public_data(e["data"])}) for e in events],
    )


def _tracking(settings: dict[str, Any], has_html: bool) -> MessageTracking:
    """The message's tracking state from its settings (penguinmails.messages
    .tracking_settings wrote it when it was queued)."""
    opens = settings.get("track_opens") is True
    plain = settings.get("plain_text") is True or not has_html
    left_out = settings.get("open_pixel_left_out") if opens and not plain else None
    return MessageTracking(
        opens=opens,
        clicks=settings.get("track_clicks") is True,
        plain_text=settings.get("plain_text") is True,
        open_pixel=opens and not plain and settings.get("open_pixel") is not False,
        open_pixel_left_out=left_out,
    )


async def _locked_message(conn: asyncpg.Connection, tenant_id: int, message_id: str) -> Message:
    message = await fetch_message(conn, tenant_id, message_id)
    assert message is not None  # locked by this transaction
    return message


async def _lock(conn: asyncpg.Connection, tenant_id: int, message_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(SQL["lock_message"], tenant_id, message_id)
    if row is None:
        raise not_found("Message")
    return row


@API.route(
    "DELETE",
    "/messages/{id}",
    summary="Cancel a message not yet handed to a receiving server",
    tag="Sending",
    response=Message,
    errors=(404, 409),
)
async def cancel_message(call: Call[None, None]) -> Message:
    message_id = call.path_id("msg", "Message")
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _lock(conn, tenant, message_id)
        if row["status"] == "sending":
            raise conflict(
                "This message is sending: it is being handed to a receiving server now and can "
                "no longer be cancelled"
            )
        if row["status"] not in CANCELLABLE:
            raise conflict(
                f"This message is already {row['status']}; only a message still "
                "queued, deferred or paused can be cancelled"
            )
        await conn.execute(SQL["cancel_message"], row["id"])
        return await _locked_message(conn, tenant, message_id)


@API.route(
    "PATCH",
    "/messages/{id}",
    summary="Reschedule a message still waiting (queued and not yet due, or deferred)",
    tag="Sending",
    body=MessageReschedule,
    response=Message,
    errors=(404, 409),
)
async def reschedule_message(call: Call[MessageReschedule, None]) -> Message:
    message_id = call.path_id("msg", "Message")
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await _lock(conn, tenant, message_id)
        status = row["status"]
        if not (status == "deferred" or (status == "queued" and row["waiting"])):
            why = "is due and may be sent any moment" if status == "queued" else f"is {status}"
            raise conflict(
                f"This message {why}; only a message queued for later, or deferred, can be "
                "rescheduled"
            )
        await conn.execute(SQL["reschedule_message"], row["id"], call.body.send_at)
        return await _locked_message(conn, tenant, message_id)
