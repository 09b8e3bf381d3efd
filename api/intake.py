"""What the integrations do with what arrives from other systems (Zapier, Shopify, HubSpot,
Salesforce): make or merge a contact, enrol it in a sequence, send it a template. Each is the
same work the API's own routes do (api.sequences, api.sends), in the caller's transaction.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from pydantic import ValidationError

from api.auth import Principal
from api.envelope import pydantic_details
from api.errors import validation_error
from api.models import Contact, Content, Enrollment, SendRequest, SendResult
from api.routing import is_public_id
from api.senders import check_live_sender
from api.sends import prepare_send, queue_send
from api.sequences import _enroll, _sequence_row
from penguinmails.config import Settings
from penguinmails.queries import load

SQL = load("api", "intake.sql")
_NOT_IN_TAG = re.compile(r"[\s,]+")


def clean_tag(value: object) -> str:
    """A label from another system as one of our tags (no spaces or commas, at most 64
    characters, lower case as the documentation's examples): "Landing Page" -> landing_page."""
    return _NOT_IN_TAG.sub("_", str(value).strip()).strip("_").lower()[:64]


async def upsert_contact(
    conn: asyncpg.Connection,
    tenant_id: int,
    email: str,
    *,
    first_name: str | None = None,
    last_name: str | None = None,
    company: str | None = None,
    custom_fields: dict[str, Any] | None = None,
    tags: list[str] | None = None,
) -> asyncpg.Record:
    """The contact with this address, created or merged (see upsert_contact in intake.sql)."""
    row = await conn.fetchrow(
        SQL["upsert_contact"],
        tenant_id,
        email,
        first_name or None,
        last_name or None,
        company or None,
        custom_fields or {},
        list(dict.fromkeys(t for t in map(clean_tag, tags or []) if t)),
    )
    assert row is not None
    return row


def contact_model(row: asyncpg.Record) -> Contact:
    return Contact(
        id=row["public_id"],
        **{k: row[k] for k in Contact.model_fields if k not in ("id", "livemode")},
    )


async def enroll(
    conn: asyncpg.Connection,
    principal: Principal,
    settings: Settings,
    contact: asyncpg.Record,
    sequence: str,
    *,
    re_enroll: bool = False,
) -> Enrollment:
    """Enrol the contact in the sequence named by id (seq_...) or by name; 404 if none."""
    tenant = principal.tenant_id
    row = await _sequence_row(conn, tenant, sequence, by_name=not is_public_id(sequence, "seq"))
    await check_live_sender(conn, principal, settings, row["from_email"])
    (item,) = await _enroll(conn, tenant, row, [contact], re_enroll, "contact")
    return item


async def send_template(
    conn: asyncpg.Connection,
    principal: Principal,
    settings: Settings,
    to: str,
    template_id: str,
    personalization: dict[str, Any],
    *,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> SendResult:
    """One message from a stored template, from the mode's default sender."""
    try:
        body = SendRequest.model_validate(
            {
                "to": [to],
                "content": Content(template_id=template_id),
                "personalization": personalization,
                "tags": tags or [],
                "metadata": metadata or {},
            }
        )
    except ValidationError as exc:
        raise validation_error(pydantic_details(exc)) from None
    prepared = await prepare_send(conn, principal, body, settings=settings)
    return await queue_send(conn, principal.tenant_id, prepared)
