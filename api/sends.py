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
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Literal, TypeVar

import asyncpg
import orjson
from pydantic import BaseModel

from api import identities
from api.auth import Principal
from api.drafts import campaign_event, draft_from_row, lock_campaign
from api.errors import ApiError, conflict, not_found, validation_error
from api.messages import fetch_message
from api.models import (
    MAX_SEND_RECIPIENTS,
    BatchSendRequest,
    BatchSendResult,
    BulkSendRequest,
    BulkSendResult,
    Message,
    Sender,
    SendRequest,
    SendResult,
    SentMessage,
)
from api.routing import API, Call, is_public_id
from api.senders import MAX_DETAILS, check_draft, resolve_sender
from api.templates import content_of
from api.variants import check_variants, enqueue_variants
from api.windows import into_window
from penguinmails.attachments import Attachment, decode_content
from penguinmails.config import Settings
from penguinmails.messages import Address, Draft, InvalidMessage, enqueue_draft
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
}
Kind = Literal["to", "cc", "bcc"]


def _single_field(name: str, kinds: Sequence[tuple[Kind, int]]) -> str:
    """The request's name for a field the Draft names: recipients[i] is to/cc/bcc[j], and
    the one personalization is every recipient's."""
    match = re.match(r"^(recipients|personalization)\[(\d+)\](.*)$", name)
    if match is not None:
        root, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if root == "personalization":
            return "personalization" + rest
        kind, position = kinds[index]
        return f"{kind}[{position}].email{rest}"
    return _SINGLE_FIELDS.get(name, name)


def _envelope_errors(body: SendRequest) -> list[dict[str, str]]:
    """What pydantic cannot see field by field: the total, duplicates, a Reply-To header."""
    errors = []
    for name in body.headers:
        if name.lower() == "reply-to":
            errors.append({"field": f"headers.{name}", "message": "is given as reply_to"})
    total = len(body.to) + len(body.cc) + len(body.bcc)
    if total > MAX_SEND_RECIPIENTS:
        errors.append(
            {
                "field": "bcc" if body.bcc else "cc" if body.cc else "to",
                "message": f"at most {MAX_SEND_RECIPIENTS} recipients in to, cc and bcc "
                f"together ({total} given)",
            }
        )
    seen: dict[str, str] = {}
    for kind in ("to", "cc", "bcc"):
        for i, address in enumerate(getattr(body, kind)):
            where = f"{kind}[{i}]"
            first = seen.setdefault(address.email.lower(), where)
            if first != where:
                # Two rows for one address would send it the message twice.
                errors.append({"field": f"{where}.email", "message": f"already in {first}"})
    return errors


@dataclasses.dataclass
class PreparedSend:
    draft: Draft
    kinds: list[tuple[Kind, int]]


SenderCache = dict[tuple[str, str] | None, tuple[str, str]]


async def prepare_send(
    conn: asyncpg.Connection,
    principal: Principal,
    body: SendRequest,
    senders: SenderCache | None = None,
    settings: Settings | None = None,
) -> PreparedSend:
    """The checked Draft of one send request (one recipient per to, cc and bcc address), or
    a 422 naming the request's fields; writes nothing. `senders` keeps resolved senders
    across a batch, whose messages mostly share one `from` (a query saved per message)."""
    errors = _envelope_errors(body)
    if errors:
        raise validation_error(errors)
    content = await content_of(conn, principal.tenant_id, body.content, body.subject)
    key = None if body.from_ is None else (body.from_.email, body.from_.name)
    if senders is not None and key in senders:
        from_email, from_name = senders[key]
    else:
        from_email, from_name = await resolve_sender(conn, principal, body.from_, settings=settings)
        if senders is not None:
            senders[key] = (from_email, from_name)
    kinds: list[tuple[Kind, int]] = [
        *(("to", i) for i in range(len(body.to))),
        *(("cc", i) for i in range(len(body.cc))),
        *(("bcc", i) for i in range(len(body.bcc))),
    ]
    envelope = [*body.to, *body.cc, *body.bcc]
    draft = Draft(
        from_email=from_email,
        from_name=from_name,
        subject=content.subject or "",
        recipients=[a.email for a in envelope],
        text=content.text,
        html=content.html,
        headers=body.headers,
        personalization=[body.personalization] * len(envelope),
        settings={
            "track_opens": body.tracking.track_opens,
            "track_clicks": body.tracking.track_clicks,
            **({"plain_text": True} if body.tracking.plain_text else {}),
        },
        send_at=body.send_at,
        sandbox=principal.sandbox,
        to_header=[Address(a.email, a.name) for a in body.to],
        cc_header=[Address(a.email, a.name) for a in body.cc],
        reply_to=[Address(a.email, a.name) for a in body.reply_to],
        tags=body.tags,
        metadata=body.metadata,
        priority=body.priority,
    )
    try:
        draft.attachments = _attachments(body)
        draft.validate()
    except InvalidMessage as exc:
        raise validation_error(
            [{"field": _single_field(exc.field, kinds), "message": exc.message}]
        ) from None
    return PreparedSend(draft, kinds)


async def queue_send(
    conn: asyncpg.Connection, tenant_id: int, prepared: PreparedSend
) -> SendResult:
    try:
        # The executable check needs the tenant's setting, so it runs with the insert.
        queued = await enqueue_draft(conn, tenant_id, prepared.draft)
    except InvalidMessage as exc:
        raise validation_error(
            [{"field": _single_field(exc.field, prepared.kinds), "message": exc.message}]
        ) from None
    messages = [
        SentMessage(id=q.public_id, email=q.recipient, kind=kind)
        for q, (kind, _) in zip(queued, prepared.kinds, strict=True)
    ]
    return SendResult(
        message_id=messages[0].id,
        sandbox=prepared.draft.sandbox,
        messages=messages,
        suppressed=[q.recipient for q in queued if q.suppressed],
    )


@API.route(
    "POST",
    "/emails/send",
    summary="Send one message to its to, cc and bcc recipients",
    tag="Sending",
    body=SendRequest,
    response=SendResult,
    status=202,
    headers=(IDEMPOTENCY_HEADER,),
    errors=(409,),
)
async def send_email(call: Call[SendRequest, None]) -> SendResult:
    """Each of to, cc and bcc (at most 50 in all) gets its own message row, with its own
    status and events; all show the same To and Cc, and no copy shows a Bcc."""

    async def work(conn: asyncpg.Connection) -> SendResult:
        prepared = await prepare_send(conn, call.principal, call.body, settings=call.state.settings)
        return await queue_send(conn, call.principal.tenant_id, prepared)

    return await idempotent(call, SendResult, work)


def _attachments(body: SendRequest) -> list[Attachment]:
    return [
        Attachment(
            filename=a.filename,
            content=decode_content(a.content, f"attachments[{i}].content"),
            content_type=a.content_type,
            disposition=a.disposition,
            content_id=a.content_id,
        )
        for i, a in enumerate(body.attachments)
    ]


@API.route(
    "POST",
    "/emails/batch",
    summary="Send up to 500 different messages in one all-or-nothing request",
    tag="Sending",
    body=BatchSendRequest,
    response=BatchSendResult,
    status=202,
    headers=(IDEMPOTENCY_HEADER,),
    errors=(409,),
)
async def send_batch(call: Call[BatchSendRequest, None]) -> BatchSendResult:
    """Every message is checked before any is written (errors named `messages[3].to`), then
    all are queued in one transaction; one Idempotency-Key covers the whole batch."""

    async def work(conn: asyncpg.Connection) -> BatchSendResult:
        prepared: list[PreparedSend] = []
        errors: list[dict[str, str]] = []
        senders: SenderCache = {}
        for i, body in enumerate(call.body.messages):
            try:
                prepared.append(
                    await prepare_send(
                        conn, call.principal, body, senders, settings=call.state.settings
                    )
                )
            except ApiError as exc:
                if exc.status != 422:
                    raise
                for detail in exc.details:
                    field = detail.get("field", "")
                    errors.append(
                        {
                            "field": f"messages[{i}].{field}" if field else f"messages[{i}]",
                            "message": detail.get("message", ""),
                        }
                    )
                if len(errors) >= MAX_DETAILS:
                    break
        if errors:
            raise validation_error(errors[:MAX_DETAILS])
        tenant = call.principal.tenant_id
        return BatchSendResult(data=[await queue_send(conn, tenant, p) for p in prepared])

    return await idempotent(call, BatchSendResult, work)


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
        tenant = call.principal.tenant_id
        row = await lock_campaign(conn, tenant, body.campaign_id)
        if row["status"] in ("paused", "cancelled"):
            raise conflict(f"The campaign is {row['status']}; nothing can be added to it")
        stored = (
            Sender.model_construct(email=row["from_email"], name=row["from_name"])
            if row["from_email"]
            else None
        )
        from_email, from_name = await resolve_sender(
            conn, call.principal, stored, settings=call.state.settings
        )
        base = draft_from_row(row, from_email, from_name)
        check_draft(base, body.recipients)
        check_variants(base, row["variants"], body.recipients)
        winner = row["ab_winner"]["variant"] if row["ab_winner"] else None
        base.campaign_id = row["id"]
        base.sandbox = row["sandbox"] or call.principal.sandbox
        size = body.batch_size or len(body.recipients)
        start = body.send_at or await conn.fetchval(SQL["now"])
        queued: list[str] = []
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
            rows = await enqueue_variants(
                conn, tenant, batch, row["variants"], row["ab_test"], winner
            )
            await identities.assign(
                conn, tenant, row["settings"].get("identities", []), [q.id for q in rows]
            )
            await into_window(conn, row["id"], [q.id for q in rows])
            queued += [q.public_id for q in rows]
            batches += 1
        await conn.execute(SQL["add_to_campaign"], row["id"], tenant, len(queued))
        await campaign_event(
            conn,
            call.principal.tenant_id,
            row["id"],
            "campaign.sent",
            {
                "name": row["name"],
                "status": "sending",
                "queued": len(queued),
                "batches": batches,
                "send_at": start.isoformat(),
            },
        )
        return BulkSendResult(
            campaign_id=body.campaign_id,
            queued=len(queued),
            batches=batches,
            first_batch_at=start,
            last_batch_at=last,
            message_ids=queued,
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
    message = await fetch_message(
        call.pool, call.principal.tenant_id, call.path_id("msg", "Message")
    )
    if message is None:
        raise not_found("Message")
    return message
