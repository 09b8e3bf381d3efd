"""Shopify, HubSpot and Salesforce connectors: each platform's webhooks, received on our
endpoint, verified with that platform's own scheme, and mapped onto contacts.

A tenant registers a connector (`POST /api/v1/connectors`: the platform, its signing secret,
and what a new contact gets: a sequence, a template, extra tags) and points the platform at
`/api/v1/connectors/{id}/webhook`. The secret is sealed at rest with the server keys.

- Shopify: `X-Shopify-Hmac-Sha256`, the base64 HMAC-SHA256 of the raw body under the app's
  secret; replays by `X-Shopify-Webhook-Id`.
- HubSpot: `X-HubSpot-Signature-v3`, the base64 HMAC-SHA256 of method + URL + body +
  `X-HubSpot-Request-Timestamp` under the app's client secret, the timestamp within five
  minutes; replays by timestamp and body.
- Salesforce: an outbound message (SOAP) whose URL carries `?token=` the shared secret (the
  messages are not signed); replays by each notification's `Id`.

A bad signature is 401 and changes nothing. The mapping follows the product documentation:
Shopify `customers/create` and `customers/update` give `shopify_customer_id`, `total_spent`,
`orders_count` and the tags `shopify_customer` (`new_customer` on create); HubSpot contact
objects `hubspot_contact_id`, `lifecycle_stage` and `hubspot_sync`, `crm_integration`;
Salesforce leads `salesforce_lead_id`, `lead_source`, `industry` and `salesforce_lead`, the
lead source. A contact the delivery creates is enrolled in the connector's sequence and sent
its template; an existing one is only updated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from xml.etree.ElementTree import Element

import orjson
from aiohttp import web
from defusedxml import ElementTree as SafeXML
from pydantic import Field

from api.auth import Principal
from api.errors import ApiError, not_found, unauthorized, validation_error
from api.intake import enroll, send_template, upsert_contact
from api.models import LIVEMODE, Deleted, ListQuery, Owned, Page, Request, Tag
from api.routing import API, STATE, Call, decode_cursor, is_public_id, keyset_page
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.webhooks.signing import seal, unseal

log = logging.getLogger(__name__)
SQL = load("api", "connectors.sql")

Platform = Literal["shopify", "hubspot", "salesforce"]
HUBSPOT_TOLERANCE_MS = 5 * 60 * 1000
SHOPIFY_TOPICS = ("customers/create", "customers/update")
_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
_SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
SALESFORCE_ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{_SOAP}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{_OUTBOUND}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


class ConnectorCreate(Request):
    platform: Platform
    secret: str = Field(
        min_length=8,
        max_length=500,
        description="Shopify: the app's API secret; HubSpot: the app's client secret; "
        "Salesforce: a secret of your choosing, put in the outbound message URL as ?token=.",
    )
    sequence: str | None = Field(
        default=None, max_length=200, description="Enrol each new contact in it (id or name)."
    )
    template_id: str | None = Field(
        default=None, max_length=100, description="Send each new contact this template."
    )
    tags: list[Tag] = Field(default_factory=list, max_length=20)


class Connector(Owned):
    id: str
    platform: Platform
    sequence: str | None
    template_id: str | None
    tags: list[str]
    created_at: datetime
    webhook_path: str = Field(description="Where the platform posts (on the API's host).")


def _model(row: Any) -> Connector:
    return Connector(**dict(row), webhook_path=f"/api/v1/connectors/{row['id']}/webhook")


@API.route(
    "POST",
    "/connectors",
    summary="Connect a Shopify, HubSpot or Salesforce account (its secret is sealed at rest)",
    tag="Connectors",
    tier="professional",
    body=ConnectorCreate,
    response=Connector,
    status=201,
)
async def create_connector(call: Call[ConnectorCreate, None]) -> Connector:
    body = call.body
    row = await call.pool.fetchrow(
        SQL["insert_connector"],
        call.principal.tenant_id,
        body.platform,
        seal(body.secret, server_keys(call.state.settings)),
        body.sequence,
        body.template_id,
        list(dict.fromkeys(body.tags)),
    )
    return _model(row)


@API.route(
    "GET",
    "/connectors",
    summary="List connectors, newest first (never their secrets)",
    tag="Connectors",
    tier="professional",
    query=ListQuery,
    response=Page[Connector],
)
async def list_connectors(call: Call[None, ListQuery]) -> Page[Connector]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_connectors"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
    )
    return keyset_page(Page[Connector], rows, query.limit, _model)


@API.route(
    "DELETE",
    "/connectors/{id}",
    summary="Disconnect: its webhook URL answers 404 from now on",
    tag="Connectors",
    tier="professional",
    response=Deleted,
    errors=(404,),
)
async def delete_connector(call: Call[None, None]) -> Deleted:
    connector_id = call.path_id("conn", "Connector")
    if await call.pool.fetchval(SQL["delete_connector"], call.principal.tenant_id, connector_id):
        return Deleted(id=connector_id)
    raise not_found("Connector")


# ---------------------------------------------------------------------------------------------
# Inbound webhooks


@dataclass
class Incoming:
    email: str
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    custom_fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


# (delivery id, the contacts it carries): one for Shopify and HubSpot, one per notification
# for Salesforce.
Deliveries = list[tuple[str, list[Incoming]]]


def _hmac_b64(secret: str, data: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), data, hashlib.sha256).digest()).decode()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise validation_error([{"field": "body", "message": "not JSON"}]) from None


def _text(value: Any, limit: int = 200) -> str | None:
    return None if value in (None, "") else str(value)[:limit]


def shopify(request: web.Request, body: bytes, secret: str) -> Deliveries:
    if not _same(request.headers.get("X-Shopify-Hmac-Sha256", ""), _hmac_b64(secret, body)):
        raise unauthorized("Invalid X-Shopify-Hmac-Sha256")
    delivery = request.headers.get("X-Shopify-Webhook-Id") or hashlib.sha256(body).hexdigest()
    topic = request.headers.get("X-Shopify-Topic", "")
    data = _json(body)
    if topic not in SHOPIFY_TOPICS or not isinstance(data, dict) or not data.get("email"):
        return [(delivery, [])]  # acknowledged: nothing of ours to do with it
    tags = ["shopify_customer"] + (["new_customer"] if topic == "customers/create" else [])
    address = data.get("default_address") or {}
    return [
        (
            delivery,
            [
                Incoming(
                    email=str(data["email"]),
                    first_name=_text(data.get("first_name")),
                    last_name=_text(data.get("last_name")),
                    company=_text(address.get("company") if isinstance(address, dict) else None),
                    custom_fields={
                        "shopify_customer_id": str(data.get("id")),
                        "total_spent": data.get("total_spent"),
                        "orders_count": data.get("orders_count"),
                    },
                    tags=tags,
                )
            ],
        )
    ]


def _request_url(request: web.Request) -> str:
    """The URL as the platform called it (behind a TLS proxy: https, the public host)."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    return f"{scheme}://{request.host}{request.path_qs}"


def hubspot(request: web.Request, body: bytes, secret: str) -> Deliveries:
    stamp = request.headers.get("X-HubSpot-Request-Timestamp", "")
    signature = request.headers.get("X-HubSpot-Signature-v3", "")
    try:
        fresh = abs(time.time() * 1000 - int(stamp)) <= HUBSPOT_TOLERANCE_MS
    except ValueError:
        fresh = False
    source = request.method.encode() + _request_url(request).encode() + body + stamp.encode()
    if not fresh or not _same(signature, _hmac_b64(secret, source)):
        raise unauthorized("Invalid or stale X-HubSpot-Signature-v3")
    delivery = hashlib.sha256(stamp.encode() + b"." + body).hexdigest()
    data = _json(body)
    objects = data if isinstance(data, list) else [data]
    contacts = []
    for obj in objects:
        properties = obj.get("properties") if isinstance(obj, dict) else None
        if not isinstance(properties, dict):
            continue  # a subscription event without the contact: nothing to map

        def prop(name: str, props: dict[str, Any] = properties) -> str | None:
            value = props.get(name)
            return _text(value.get("value") if isinstance(value, dict) else value)

        email = prop("email")
        if email is None:
            continue
        contact_id = obj.get("id") or obj.get("objectId") or obj.get("vid")
        contacts.append(
            Incoming(
                email=email,
                first_name=prop("firstname"),
                last_name=prop("lastname"),
                company=prop("company"),
                custom_fields={
                    "hubspot_contact_id": str(contact_id),
                    "lifecycle_stage": prop("lifecyclestage") or "lead",
                },
                tags=["hubspot_sync", "crm_integration"],
            )
        )
    return [(delivery, contacts)]


def _child(element: Element, name: str) -> str | None:
    found = element.find(f"{{{_SOBJECT}}}{name}")
    return None if found is None or not found.text else found.text.strip()


def salesforce(request: web.Request, body: bytes, secret: str) -> Deliveries:
    if not _same(request.query.get("token", ""), secret):
        raise unauthorized("Invalid token")
    try:
        root = SafeXML.fromstring(body, forbid_dtd=True)
    except Exception:  # defusedxml's refusals and expat's errors alike: not an outbound message
        raise validation_error([{"field": "body", "message": "not a SOAP message"}]) from None
    deliveries: Deliveries = []
    for note in root.iter(f"{{{_OUTBOUND}}}Notification"):
        note_id = note.findtext(f"{{{_OUTBOUND}}}Id")
        lead = note.find(f"{{{_OUTBOUND}}}sObject")
        if not note_id or lead is None:
            continue
        email = _child(lead, "Email")
        if email is None:
            deliveries.append((note_id, []))
            continue
        source = _child(lead, "LeadSource")
        deliveries.append(
            (
                note_id,
                [
                    Incoming(
                        email=email,
                        first_name=_text(_child(lead, "FirstName")),
                        last_name=_text(_child(lead, "LastName")),
                        company=_text(_child(lead, "Company")),
                        custom_fields={
                            "salesforce_lead_id": _child(lead, "Id"),
                            "lead_source": source,
                            "industry": _child(lead, "Industry"),
                        },
                        tags=["salesforce_lead"] + ([source] if source else []),
                    )
                ],
            )
        )
    return deliveries


VERIFY = {"shopify": shopify, "hubspot": hubspot, "salesforce": salesforce}


async def receive(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    connector_id = request.match_info["id"]
    row = (
        await state.pool.fetchrow(SQL["find_connector"], connector_id)
        if is_public_id(connector_id, "conn")
        else None
    )
    if row is None:
        raise not_found("Connector")
    body = await request.read()
    secret = unseal(bytes(row["secret_sealed"]), server_keys(state.settings))
    try:
        deliveries = VERIFY[row["platform"]](request, body, secret)
    except ApiError as exc:
        if exc.status == 401:
            log.warning(
                "connector webhook refused",
                extra={"action": "connector_refused", "connector": connector_id},
            )
        raise
    principal = Principal(
        tenant_id=row["tenant_id"],
        account_id=row["account_id"],
        tier=row["tier"],
        kind="sk",
        mode=row["mode"],
    )
    LIVEMODE.set(principal.livemode)  # what the dispatcher sets for the API's own routes
    made = updated = duplicates = 0
    async with state.pool.acquire() as conn, conn.transaction():
        for delivery, contacts in deliveries:
            if await conn.fetchval(SQL["record_delivery"], row["id"], delivery[:200]) is None:
                duplicates += 1
                continue
            for incoming in contacts:
                contact = await upsert_contact(
                    conn,
                    row["tenant_id"],
                    incoming.email,
                    first_name=incoming.first_name,
                    last_name=incoming.last_name,
                    company=incoming.company,
                    custom_fields={
                        k: v for k, v in incoming.custom_fields.items() if v is not None
                    },
                    tags=incoming.tags + list(row["tags"]),
                )
                if not contact["created"]:
                    updated += 1
                    continue
                made += 1
                if row["sequence"]:
                    await enroll(conn, principal, state.settings, contact, row["sequence"])
                if row["template_id"]:
                    await send_template(
                        conn,
                        principal,
                        state.settings,
                        contact["email"],
                        row["template_id"],
                        {
                            **(contact["custom_fields"] or {}),
                            **{
                                k: contact[k]
                                for k in ("email", "first_name", "last_name", "company")
                                if contact[k] is not None
                            },
                        },
                        tags=[row["platform"]],
                    )
    log.info(
        "connector webhook",
        extra={
            "action": "connector_webhook",
            "connector": connector_id,
            "created": made,
            "updated": updated,
            "duplicates": duplicates,
        },
    )
    if row["platform"] == "salesforce":  # Salesforce retries until it reads its Ack
        return web.Response(text=SALESFORCE_ACK, content_type="text/xml")
    return web.json_response(
        {
            "success": True,
            "data": {
                "received": True,
                "created": made,
                "updated": updated,
                "duplicate": duplicates == len(deliveries) and duplicates > 0,
            },
        }
    )


def add_routes(app: web.Application, prefix: str) -> None:
    """Outside the operation registry: each platform authenticates with its own scheme (no
    API key), and Salesforce must be answered in SOAP."""
    app.router.add_post(f"{prefix}/connectors/{{id}}/webhook", receive)
