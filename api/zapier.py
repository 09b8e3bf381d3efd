"""Zapier, as its platform expects, on the API's own routes and auth (an API key, or an OAuth
token from api.oauth):

- Authentication test: `GET /zapier/me` (the account and mode, for the connection's label).
- Triggers: a REST hook per event type we emit. `POST /zapier/hooks` {target_url, event}
  subscribes (it is a webhook endpoint of penguinmails.webhooks, delivered by the tracker's
  dispatcher like any other, signed the same way); `DELETE /zapier/hooks/{id}` unsubscribes.
  `GET /zapier/triggers` lists the types with a sample body each (the editor's sample
  data), and `GET /zapier/triggers/{event}` is the polling fallback: the newest events of
  that type, in the very body a hook receives (penguinmails.webhooks.payload).
- Actions: create (or update) a contact, send an email, enrol a contact in a sequence, add a
  tag: flat fields, as Zapier's forms give them.
- Incoming: `POST /zapier/incoming` {trigger_type, data} in the documentation's shape:
  `new_subscriber` and `purchase_made` make the contact and start the sequence it names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import ConfigDict, Field, ValidationError

from api.envelope import pydantic_details
from api.errors import not_found, validation_error
from api.intake import contact_model, enroll, upsert_contact
from api.models import (
    Contact,
    Deleted,
    Email,
    Enrollment,
    Name,
    Query,
    Request,
    Response,
    SendRequest,
    SendResult,
    Tag,
)
from api.routing import API, Call
from api.sends import prepare_send, queue_send
from penguinmails.queries import load
from penguinmails.webhooks import InvalidEndpoint, endpoints
from penguinmails.webhooks.payload import payload

SQL = load("api", "zapier.sql")
INTAKE_SQL = load("api", "intake.sql")
HOOK_DESCRIPTION = "Zapier REST hook"
SAMPLE_TIME = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)


class ZapierMe(Response):
    account: str
    livemode: bool
    tier: str


class HookSubscribe(Request):
    target_url: str = Field(min_length=1, max_length=2000, description="Zapier's hook URL.")
    event: str = Field(description="One event type of GET /zapier/triggers.")


class Hook(Response):
    id: str = Field(description="The webhook endpoint (wh_...): unsubscribe with it.")
    target_url: str
    event: str


class Trigger(Response):
    event: str
    sample: dict[str, Any] = Field(description="A body as a hook receives it.")


class Triggers(Response):
    items: list[Trigger]


class PollQuery(Query):
    limit: int = Field(default=50, ge=1, le=100)


class Events(Response):
    items: list[dict[str, Any]] = Field(description="Newest first, each a hook's body.")


class ContactAction(Request):
    email: Email
    first_name: Name | None = None
    last_name: Name | None = None
    company: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    custom_fields: dict[str, Any] = Field(default_factory=dict)


class SendAction(Request):
    to: Email
    template_id: str | None = Field(default=None, max_length=100)
    subject: str | None = Field(default=None, max_length=998)
    html: str | None = Field(default=None, max_length=1_000_000)
    text: str | None = Field(default=None, max_length=1_000_000)
    from_: str | None = Field(default=None, alias="from", max_length=320)


class EnrollAction(Request):
    email: Email
    sequence: str = Field(min_length=1, max_length=200, description="Its id (seq_...) or name.")
    re_enroll: bool = False


class TagAction(Request):
    email: Email
    tag: Tag


Scalar = str | int | float | bool


class IncomingData(Request):
    # Zapier passes along whatever the source app had: fields we do not use are ignored.
    model_config = ConfigDict(extra="ignore")

    email: Email
    first_name: Name | None = None
    source: Name | None = None
    sequence: str | None = Field(
        default=None, max_length=200, description="A sequence id or name to enrol in."
    )
    order_id: Scalar | None = None
    total: Scalar | None = None
    currency: Scalar | None = None
    product: Scalar | None = None


class Incoming(Request):
    trigger_type: Literal["new_subscriber", "purchase_made"]
    data: IncomingData


class IncomingResult(Response):
    contact: Contact
    enrollment: Enrollment | None


def _sample(kind: str) -> dict[str, Any]:
    message = kind.startswith("email.")
    campaign = message or kind.startswith(("campaign.", "analytics.", "ab_test."))
    row = {
        "event_public_id": "evt_0123456789abcdef0123456789abcdef",
        "event_type": kind,
        "event_data": {"url": "https://acme.test/offer"} if kind == "email.clicked" else {},
        "event_created_at": SAMPLE_TIME,
        "has_message": message,
        "has_campaign": campaign,
        "message_public_id": "msg_0123456789abcdef0123456789abcdef",
        "rfc_message_id": "0123.abcd@mta.example",
        "recipient": "ann@example.com",
        "message_tags": ["welcome"],
        "message_metadata": {"customer_id": "cus_42"},
        "campaign_public_id": "campaign_0123456789abcdef0123456789abcdef",
        "campaign_name": "Spring launch",
    }
    sample: dict[str, Any] = orjson.loads(payload(row))
    return sample


@API.route(
    "GET",
    "/zapier/me",
    summary="Zapier's authentication test: the account and mode this credential acts in",
    tag="Zapier",
    response=ZapierMe,
)
async def zapier_me(call: Call[None, None]) -> ZapierMe:
    row = await call.pool.fetchrow(INTAKE_SQL["tenant_name"], call.principal.tenant_id)
    assert row is not None
    return ZapierMe(
        account=row["account"], livemode=call.principal.livemode, tier=call.principal.tier
    )


@API.route(
    "GET",
    "/zapier/triggers",
    summary="The event types a Zap can trigger on, each with a sample body",
    tag="Zapier",
    response=Triggers,
)
async def zapier_triggers(call: Call[None, None]) -> Triggers:
    return Triggers(items=[Trigger(event=k, sample=_sample(k)) for k in endpoints.EVENT_TYPES])


def _event(call: Call[Any, Any]) -> str:
    kind = call.request.match_info["event"]
    if kind not in endpoints.EVENT_TYPES:
        raise not_found("Event type")
    return kind


@API.route(
    "GET",
    "/zapier/triggers/{event}",
    summary="Polling fallback: the newest events of one type, each as a hook receives it",
    tag="Zapier",
    query=PollQuery,
    response=Events,
    errors=(404,),
)
async def zapier_poll(call: Call[None, PollQuery]) -> Events:
    kind = _event(call)
    rows = await call.pool.fetch(
        SQL["recent_events"], call.principal.tenant_id, kind, call.query.limit
    )
    return Events(items=[orjson.loads(payload(r)) for r in rows])


@API.route(
    "POST",
    "/zapier/hooks",
    summary="Subscribe a Zapier REST hook to one event type",
    tag="Zapier",
    tier="professional",
    body=HookSubscribe,
    response=Hook,
    status=201,
)
async def zapier_subscribe(call: Call[HookSubscribe, None]) -> Hook:
    body = call.body
    if body.event not in endpoints.EVENT_TYPES:
        raise validation_error([{"field": "event", "message": "not an event type we emit"}])
    try:
        endpoint, _ = await endpoints.create_endpoint(
            call.pool,
            call.principal.tenant_id,
            body.target_url,
            [body.event],
            settings=call.state.settings,
            description=HOOK_DESCRIPTION,
        )
    except InvalidEndpoint as exc:
        field = "target_url" if exc.field == "url" else exc.field
        raise validation_error([{"field": field, "message": exc.message}]) from None
    return Hook(id=endpoint.id, target_url=endpoint.url, event=body.event)


@API.route(
    "DELETE",
    "/zapier/hooks/{id}",
    summary="Unsubscribe a Zapier REST hook",
    tag="Zapier",
    tier="professional",
    response=Deleted,
    errors=(404,),
)
async def zapier_unsubscribe(call: Call[None, None]) -> Deleted:
    hook_id = call.path_id("wh", "Hook")
    if not await endpoints.delete_endpoint(call.pool, call.principal.tenant_id, hook_id):
        raise not_found("Hook")
    return Deleted(id=hook_id)


@API.route(
    "POST",
    "/zapier/actions/contacts",
    summary="Create a contact, or update the one with this address (tags add on)",
    tag="Zapier",
    body=ContactAction,
    response=Contact,
)
async def zapier_contact(call: Call[ContactAction, None]) -> Contact:
    body = call.body
    async with call.pool.acquire() as conn:
        row = await upsert_contact(
            conn,
            call.principal.tenant_id,
            body.email,
            first_name=body.first_name,
            last_name=body.last_name,
            company=body.company,
            custom_fields=body.custom_fields,
            tags=list(body.tags),
        )
    return contact_model(row)


@API.route(
    "POST",
    "/zapier/actions/tags",
    summary="Add a tag to the contact with this address (made if new)",
    tag="Zapier",
    body=TagAction,
    response=Contact,
)
async def zapier_tag(call: Call[TagAction, None]) -> Contact:
    async with call.pool.acquire() as conn:
        row = await upsert_contact(
            conn, call.principal.tenant_id, call.body.email, tags=[call.body.tag]
        )
    return contact_model(row)


@API.route(
    "POST",
    "/zapier/actions/enrollments",
    summary="Enrol the contact with this address (made if new) in a sequence",
    tag="Zapier",
    tier="starter",
    body=EnrollAction,
    response=Enrollment,
    status=201,
    errors=(404, 409),
)
async def zapier_enroll(call: Call[EnrollAction, None]) -> Enrollment:
    body = call.body
    async with call.pool.acquire() as conn, conn.transaction():
        contact = await upsert_contact(conn, call.principal.tenant_id, body.email)
        return await enroll(
            conn,
            call.principal,
            call.state.settings,
            contact,
            body.sequence,
            re_enroll=body.re_enroll,
        )


@API.route(
    "POST",
    "/zapier/actions/emails",
    summary="Send one email: a stored template, or a subject with html and text",
    tag="Zapier",
    body=SendAction,
    response=SendResult,
    status=202,
    errors=(404, 409),
)
async def zapier_send(call: Call[SendAction, None]) -> SendResult:
    body = call.body
    content: dict[str, Any] = {"html": body.html, "text": body.text}
    if body.template_id:
        content["template_id"] = body.template_id
    request: dict[str, Any] = {
        "to": [body.to],
        "content": {k: v for k, v in content.items() if v is not None},
    }
    if body.subject is not None:
        request["subject"] = body.subject
    if body.from_:
        request["from"] = body.from_
    async with call.pool.acquire() as conn, conn.transaction():
        prepared = await prepare_send(
            conn, call.principal, _send_request(request), settings=call.state.settings
        )
        return await queue_send(conn, call.principal.tenant_id, prepared)


def _send_request(fields: dict[str, Any]) -> SendRequest:
    """The flat action's fields as the send route's body, with its errors as 422s."""
    try:
        return SendRequest.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(pydantic_details(exc)) from None


_DEFAULT_SEQUENCE = {"new_subscriber": "welcome_series"}


@API.route(
    "POST",
    "/zapier/incoming",
    summary="The documentation's Zapier hook: {trigger_type, data} makes the contact and "
    "starts the sequence it names",
    tag="Zapier",
    body=Incoming,
    response=IncomingResult,
    status=201,
    errors=(404, 409),
)
async def zapier_incoming(call: Call[Incoming, None]) -> IncomingResult:
    body = call.body
    data = body.data
    source = data.source or ""
    fields: dict[str, Any]
    if body.trigger_type == "new_subscriber":
        fields = {"zapier_trigger": "new_subscriber", "source": source or "zapier"}
        tags = ["zapier_subscriber", source or "unknown"]
    else:
        fields = {"zapier_trigger": "purchase_made"}
        for key in ("order_id", "total", "currency", "product"):
            if getattr(data, key) is not None:
                fields[f"last_purchase_{key}"] = getattr(data, key)
        tags = ["zapier_customer", "customer"]
    sequence = data.sequence or _DEFAULT_SEQUENCE.get(body.trigger_type)
    async with call.pool.acquire() as conn, conn.transaction():
        contact = await upsert_contact(
            conn,
            call.principal.tenant_id,
            data.email,
            first_name=data.first_name,
            custom_fields=fields,
            tags=tags,
        )
        enrollment = None
        if sequence:
            enrollment = await enroll(conn, call.principal, call.state.settings, contact, sequence)
        return IncomingResult(contact=contact_model(contact), enrollment=enrollment)
