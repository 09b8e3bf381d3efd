"""Single and bulk sends, and a message's status.

Both sends answer 202 only after the transaction that queued the messages committed. A bulk
send is all or nothing: every recipient is checked first (invalid ones reported by index),
then each batch is one multi-row INSERT (penguinmails.messages.enqueue) in one transaction,
batch n due `n * delay_between_batches` seconds after the first.

`Idempotency-Key` (both sends): the first request stores its response in the same transaction
as its messages; the same key with the same body replays that response (with
`Idempotent-Replayed: true`) and queues nothing; the same key with another body is 409.
A request that failed stored nothing, so it can be retried with its key. Keys last a day.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import asyncpg
import orjson
from pydantic import BaseModel

from api.drafts import campaign_event, draft_from_row, lock_campaign
from api.errors import ApiError, conflict, not_found, validation_error
from api.messages import event_data
from api.models import (
    BulkSendRequest,
    BulkSendResult,
    Message,
    MessageEvent,
    Sender,
    SendRequest,
    SendResult,
)
from api.routing import API, Call, is_public_id
from api.senders import check_draft, resolve_sender
from api.templates import content_of
from penguinmails.messages import Draft, InvalidMessage, enqueue
from penguinmails.queries import load

SQL = load("api")
IDEMPOTENCY_HEADER = "Idempotency-Key"
M = TypeVar("M", bound=BaseModel)


def _idempotency_key(call: Call) -> str | None:
    key = call.request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise validation_error(
            [
                {
                    "field": IDEMPOTENCY_HEADER,
                    "message": "must be 1 to 255 printable ASCII characters",
                }
            ]
        )
    return key


async def idempotent(
    call: Call, model: type[M], work: Callable[[asyncpg.Connection], Awaitable[M]]
) -> M:
    """Run `work` in a transaction, at most once per Idempotency-Key."""
    key = _idempotency_key(call)
    fingerprint = hashlib.sha256(
        call.request.path.encode()
        + b"\0"
        + orjson.dumps(
            call.body.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS
        )
    ).digest()
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        if key is not None:
            claimed = await conn.fetchval(SQL["claim_idempotency_key"], tenant, key, fingerprint)
            if claimed is None:
                row = await conn.fetchrow(SQL["get_idempotency_key"], tenant, key)
                assert row is not None
                if bytes(row["request_hash"]) != fingerprint:
                    raise ApiError(
                        409,
                        "IDEMPOTENCY_CONFLICT",
                        "This Idempotency-Key was used with a different request",
                        [{"field": IDEMPOTENCY_HEADER, "message": "reused with another body"}],
                    )
                call.status = row["status_code"]
                call.response_headers["Idempotent-Replayed"] = "true"
                return model.model_validate(row["response"])
        result = await work(conn)
        if key is not None:
            await conn.execute(
                SQL["store_idempotency_response"],
                tenant,
                key,
                202,
                result.model_dump(mode="json", by_alias=True),
            )
        return result


_SINGLE_FIELDS = {
    "from": "from.email",
    "from_name": "from.name",
    "text": "content.text",
    "html": "content.html",
    "recipients[0]": "to",
}


def _single_field(name: str) -> str:
    if name.startswith("personalization[0]"):
        return "personalization" + name[len("personalization[0]") :]
    return _SINGLE_FIELDS.get(name, name)


@API.route(
    "POST",
    "/emails/send",
    summary="Send one message",
    tag="Sending",
    body=SendRequest,
    response=SendResult,
    status=202,
    headers=(IDEMPOTENCY_HEADER,),
    errors=(409,),
)
async def send_email(call: Call[SendRequest, None]) -> SendResult:
    body = call.body

    async def work(conn: asyncpg.Connection) -> SendResult:
        content = await content_of(conn, call.principal.tenant_id, body.content, body.subject)
        from_email, from_name = await resolve_sender(conn, call.principal, body.from_)
        draft = Draft(
            from_email=from_email,
            from_name=from_name,
            subject=content.subject or "",
            recipients=[body.to],
            text=content.text,
            html=content.html,
            headers=body.headers,
            personalization=[body.personalization],
            settings={
                "track_opens": body.tracking.track_opens,
                "track_clicks": body.tracking.track_clicks,
            },
            send_at=body.send_at,
            sandbox=call.principal.sandbox,
        )
        try:
            draft.validate()
        except InvalidMessage as exc:
            raise validation_error(
                [{"field": _single_field(exc.field), "message": exc.message}]
            ) from None
        ids = await enqueue(conn, call.principal.tenant_id, draft)
        [public] = await public_message_ids(conn, ids)
        return SendResult(message_id=public, sandbox=draft.sandbox)

    return await idempotent(call, SendResult, work)


@API.route(
    "POST",
    "/emails/send-bulk",
    summary="Send a campaign's content to up to 10,000 recipients, in timed batches",
    tag="Sending",
    tier="starter",
    body=BulkSendRequest,
    response=BulkSendResult,
    status=202,
    headers=(IDEMPOTENCY_HEADER,),
    errors=(404, 409),
)
async def send_bulk(call: Call[BulkSendRequest, None]) -> BulkSendResult:
    body = call.body

    async def work(conn: asyncpg.Connection) -> BulkSendResult:
        if not is_public_id(body.campaign_id, "campaign"):
            raise not_found("Campaign")
        row = await lock_campaign(conn, call.principal.tenant_id, body.campaign_id)
        if row["status"] in ("paused", "cancelled"):
            raise conflict(f"The campaign is {row['status']}; nothing can be added to it")
        stored = (
            Sender.model_construct(email=row["from_email"], name=row["from_name"])
            if row["from_email"]
            else None
        )
        from_email, from_name = await resolve_sender(conn, call.principal, stored)
        base = draft_from_row(row, from_email, from_name)
        check_draft(base, body.recipients)
        base.campaign_id = row["id"]
        base.sandbox = row["sandbox"] or call.principal.sandbox
        size = body.batch_size or len(body.recipients)
        start = body.send_at or await conn.fetchval(SQL["now"])
        ids: list[int] = []
        batches = 0
        last = start
        for offset in range(0, len(body.recipients), size):
            chunk = body.recipients[offset : offset + size]
            last = start + timedelta(seconds=batches * body.delay_between_batches)
            batch = dataclasses.replace(
                base,
                recipients=[r.email for r in chunk],
                personalization=[r.personalization for r in chunk],
                send_at=last if (batches or body.send_at) else None,
            )
            ids.extend(await enqueue(conn, call.principal.tenant_id, batch))
            batches += 1
        await conn.execute(SQL["add_to_campaign"], row["id"], call.principal.tenant_id, len(ids))
        await campaign_event(
            conn,
            call.principal.tenant_id,
            row["id"],
            "campaign.sent",
            {
                "name": row["name"],
                "status": "sending",
                "queued": len(ids),
                "batches": batches,
                "send_at": start.isoformat(),
            },
        )
        return BulkSendResult(
            campaign_id=body.campaign_id,
            queued=len(ids),
            batches=batches,
            first_batch_at=start,
            last_batch_at=last,
            message_ids=await public_message_ids(conn, ids),
            sandbox=base.sandbox,
        )

    return await idempotent(call, BulkSendResult, work)


@API.route(
    "GET",
    "/messages/{id}",
    summary="A message's status, attempts, last SMTP reply and events",
    tag="Sending",
    response=Message,
    errors=(404,),
)
async def get_message(call: Call[None, None]) -> Message:
    message_id = call.path_id("msg", "Message")
    row = await call.pool.fetchrow(SQL["get_message"], call.principal.tenant_id, message_id)
    if row is None:
        raise not_found("Message")
    events = await call.pool.fetch(SQL["message_events"], row["pk"])
    fields = {k: v for k, v in row.items() if k != "pk"}
    return Message(
        **fields,
        events=[MessageEvent(**{**dict(e), "data": event_data(e["data"])}) for e in events],
    )


async def public_message_ids(conn: asyncpg.Connection, ids: list[int]) -> list[str]:
    return [r["public_id"] for r in await conn.fetch(SQL["message_public_ids"], ids)]
