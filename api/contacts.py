"""Contacts (CRUD, list with a tag filter) and the suppression list.

Emails are stored lower-cased, so `Ann@Example.com` and `ann@example.com` are one contact
and one suppression, matching how the MTA checks suppressions. A suppression added by hand
is honoured by the MTA at its next claim of a message to that address.
"""

from __future__ import annotations

import asyncpg

from api.errors import ApiError, not_found, validation_error
from api.models import (
    Contact,
    ContactCreate,
    ContactListQuery,
    ContactUpdate,
    Deleted,
    ListQuery,
    Page,
    Suppression,
    SuppressionCreate,
)
from api.routing import API, Call, decode_cursor, encode_cursor, keyset_page
from penguinmails.queries import load

SQL = load("api")


def _duplicate(email: str) -> ApiError:
    return ApiError(
        409,
        "CONFLICT",
        f"A contact with email {email.lower()} already exists",
        [{"field": "email", "message": "already exists"}],
    )


@API.route(
    "POST",
    "/contacts",
    summary="Create a contact",
    tag="Contacts",
    body=ContactCreate,
    response=Contact,
    status=201,
    errors=(409,),
)
async def create_contact(call: Call[ContactCreate, None]) -> Contact:
    body = call.body
    row = await call.pool.fetchrow(
        SQL["insert_contact"],
        call.principal.tenant_id,
        body.email,
        body.first_name,
        body.last_name,
        body.company,
        body.custom_fields,
        list(dict.fromkeys(body.tags)),
    )
    if row is None:
        raise _duplicate(body.email)
    return Contact(**dict(row))


@API.route(
    "GET",
    "/contacts/{id}",
    summary="Get a contact",
    tag="Contacts",
    response=Contact,
    errors=(404,),
)
async def get_contact(call: Call[None, None]) -> Contact:
    row = await call.pool.fetchrow(
        SQL["get_contact"], call.principal.tenant_id, call.path_id("contact", "Contact")
    )
    if row is None:
        raise not_found("Contact")
    return Contact(**dict(row))


@API.route(
    "GET",
    "/contacts",
    summary="List contacts, newest first, optionally by tag",
    tag="Contacts",
    query=ContactListQuery,
    response=Page[Contact],
)
async def list_contacts(call: Call[None, ContactListQuery]) -> Page[Contact]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_contacts"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
        query.tag,
    )
    return keyset_page(Page[Contact], rows, query.limit, lambda r: Contact(**dict(r)))


@API.route(
    "PATCH",
    "/contacts/{id}",
    summary="Change a contact (only the fields given)",
    tag="Contacts",
    body=ContactUpdate,
    response=Contact,
    errors=(404, 409),
)
async def update_contact(call: Call[ContactUpdate, None]) -> Contact:
    body = call.body
    contact_id = call.path_id("contact", "Contact")
    given = body.model_fields_set
    for name in ("email", "custom_fields", "tags"):
        if name in given and getattr(body, name) is None:
            raise validation_error([{"field": name, "message": "must not be null"}])
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["get_contact"], call.principal.tenant_id, contact_id)
        if row is None:
            raise not_found("Contact")
        merged = dict(row)
        for name in given:
            merged[name] = getattr(body, name)
        try:
            updated = await conn.fetchrow(
                SQL["update_contact"],
                call.principal.tenant_id,
                contact_id,
                merged["email"],
                merged["first_name"],
                merged["last_name"],
                merged["company"],
                merged["custom_fields"],
                list(dict.fromkeys(merged["tags"])),
            )
        except asyncpg.UniqueViolationError:
            raise _duplicate(merged["email"]) from None
    if updated is None:
        raise not_found("Contact")
    return Contact(**dict(updated))


@API.route(
    "DELETE",
    "/contacts/{id}",
    summary="Delete a contact",
    tag="Contacts",
    response=Deleted,
    errors=(404,),
)
async def delete_contact(call: Call[None, None]) -> Deleted:
    contact_id = call.path_id("contact", "Contact")
    if (
        await call.pool.fetchval(SQL["delete_contact"], call.principal.tenant_id, contact_id)
        is None
    ):
        raise not_found("Contact")
    return Deleted(id=contact_id)


@API.route(
    "GET",
    "/suppressions",
    summary="List suppressed addresses",
    tag="Suppressions",
    query=ListQuery,
    response=Page[Suppression],
)
async def list_suppressions(call: Call[None, ListQuery]) -> Page[Suppression]:
    query = call.query
    after = decode_cursor(query.cursor, numeric=False)
    rows = await call.pool.fetch(
        SQL["list_suppressions"], call.principal.tenant_id, after, query.limit + 1
    )
    return keyset_page(
        Page[Suppression],
        rows,
        query.limit,
        lambda r: Suppression(**dict(r)),
        lambda _row, item: encode_cursor(item.email),
    )


@API.route(
    "POST",
    "/suppressions",
    summary="Suppress an address (idempotent: keeps the first reason)",
    tag="Suppressions",
    body=SuppressionCreate,
    response=Suppression,
    status=201,
)
async def add_suppression(call: Call[SuppressionCreate, None]) -> Suppression:
    body = call.body
    row = await call.pool.fetchrow(
        SQL["add_suppression"], call.principal.tenant_id, body.email, body.reason, body.detail
    )
    assert row is not None
    if not row["created"]:
        call.status = 200
    return Suppression(
        email=row["email"], reason=row["reason"], detail=row["detail"], created_at=row["created_at"]
    )


@API.route(
    "DELETE",
    "/suppressions/{email}",
    summary="Remove an address from the suppression list",
    tag="Suppressions",
    response=Deleted,
    errors=(404, 422),
)
async def delete_suppression(call: Call[None, None]) -> Deleted:
    email = call.request.match_info["email"]
    if len(email) > 254:
        raise not_found("Suppression")
    found = await call.pool.fetchval(SQL["delete_suppression"], call.principal.tenant_id, email)
    if found is None:
        raise not_found("Suppression")
    return Deleted(id=found)
