"""Sequences: ordered steps sent to each enrolled contact until one replies (or bounces,
complains, unsubscribes, optionally clicks or auto-replies) or a person stops it.

A sequence holds its steps with their content resolved (a template's current version is
copied in, as a campaign's is), its sender and what stops it. An enrolment is one contact's
run through it; enrolling queues step 1 at once (in the enrolling transaction, through the
scheduler's own statement), and the scheduler (penguinmails.sequences, run by the API
process) queues each next step once the previous one was accepted by its receiver. Stopping
is done by the database in the transaction that records the stopping event (migration
0027), so it holds whichever role records it: inbound, the tracker or the MTA.

Every route is the starter tier's, as campaign sending is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
import orjson

from api.campaigns import settings_dict
from api.drafts import new_draft
from api.errors import ApiError, conflict, not_found, validation_error
from api.identities import pool_ids
from api.models import (
    ABTest,
    ContactSequenceEnroll,
    ContentOut,
    DelayOut,
    Enrolled,
    Enrollment,
    EnrollmentCreate,
    EnrollmentQuery,
    ListQuery,
    Page,
    Recipient,
    SenderOut,
    SequenceAnalytics,
    SequenceCreate,
    SequenceStep,
    SequenceStepIn,
    SequenceStepStats,
    SequenceUpdate,
    StopOn,
    VariantStats,
)
from api.models import Sequence as SequenceModel
from api.routing import API, Call, decode_cursor, is_public_id, keyset_page
from api.senders import check_draft, check_live_sender, resolve_sender
from api.templates import check_content, resolve_content
from api.variants import resolve_variants, variant_models
from api.windows import stored_columns, window_columns, window_model
from penguinmails.ab import step_variant_stats, variant_results
from penguinmails.messages import InvalidMessage, address_domain
from penguinmails.queries import load
from penguinmails.sequences import schedule

SQL = load("api", "sequences.sql")

# Enrolment by tag takes at most this many contacts a request (the rest: call it again, as
# those enrolled are skipped).
MAX_TAG_ENROLL = 10_000
STOP_REASONS = ("reply", "auto_reply", "bounce", "complaint", "unsubscribe", "click")


# -- Steps -------------------------------------------------------------------------------------


def _prefixed(exc: ApiError, prefix: str) -> ApiError:
    """The same 422 with its fields named from the request's root (`steps[1].subject`)."""
    details = [
        {**d, "field": f"{prefix}.{d['field']}" if d["field"] else prefix} for d in exc.details
    ]
    return validation_error(details)


async def _resolve_steps(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, steps: list[SequenceStepIn]
) -> list[dict[str, Any]]:
    """Each step's content with its template filled in, checked as a send would check it:
    a 422 names the step (`steps[0].subject`)."""
    resolved: list[dict[str, Any]] = []
    first_subject = ""
    for i, step in enumerate(steps):
        try:
            content = await resolve_content(
                conn,
                tenant_id,
                template_id=step.content.template_id,
                subject=step.subject,
                html=step.content.html,
                text=step.content.text,
            )
            if i == 0:
                if not content.subject:
                    raise validation_error([{"field": "subject", "message": "Field required"}])
                first_subject = content.subject
            check_content(content.subject or f"Re: {first_subject}", content.html, content.text)
        except ApiError as exc:
            if exc.status != 422:
                raise
            raise _prefixed(exc, f"steps[{i}]") from None
        base = {
            "subject": content.subject or f"Re: {first_subject}",
            "html": content.html,
            "text": content.text,
        }
        variants = await resolve_variants(
            conn, tenant_id, step.variants, base, field=f"steps[{i}].variants"
        )
        resolved.append(
            {
                "days": step.delay.days,
                "business_days": step.delay.business_days,
                "hours": step.delay.hours,
                # A template's subject is the step's own; a follow-up without one answers
                # step 1 ("Re: ...").
                "subject": content.subject,
                "html": content.html,
                "text": content.text,
                "template_id": content.template_id,
                "template_version": content.template_version,
                "variants": variants,
            }
        )
    return resolved


async def _insert_steps(
    conn: asyncpg.Connection, sequence_pk: int, steps: list[dict[str, Any]]
) -> None:
    columns = ("days", "business_days", "hours", "subject", "html", "text", "template_id")
    await conn.execute(
        SQL["insert_steps"],
        sequence_pk,
        *([s[c] for s in steps] for c in columns),
        [s["template_version"] for s in steps],
        [orjson.dumps(s["variants"]).decode() for s in steps],
    )


def _ab_test(
    test: ABTest | dict[str, Any] | None, steps: Iterable[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """What the row holds; a test needs a step with two variants to choose between."""
    if test is None:
        return None
    if not any(len(s["variants"]) >= 2 for s in steps):
        raise validation_error(
            [{"field": "ab_test", "message": "an A/B test needs a step with two variants"}]
        )
    return test.model_dump() if isinstance(test, ABTest) else test


def _stop_on(stop_on: StopOn) -> list[str]:
    chosen = stop_on.model_dump()
    return [reason for reason in STOP_REASONS if chosen[reason]]


def _sequence_model(row: asyncpg.Record, steps: Iterable[asyncpg.Record]) -> SequenceModel:
    return SequenceModel.model_validate(
        {
            "id": row["public_id"],
            "name": row["name"],
            "from": SenderOut(email=row["from_email"], name=row["from_name"]),
            "steps": [
                SequenceStep(
                    step=s["position"],
                    delay=DelayOut(
                        days=s["delay_days"],
                        business_days=s["business_days"],
                        hours=s["delay_hours"],
                    ),
                    subject=s["subject"],
                    content=ContentOut(
                        html=s["html_body"],
                        text=s["text_body"],
                        template_id=s["template_id"],
                        template_version=s["template_version"],
                    ),
                    variants=variant_models(s["variants"]),
                    ab_winner=s["ab_winner"],
                )
                for s in steps
            ],
            "stop_on": {reason: reason in row["stop_on"] for reason in STOP_REASONS},
            "settings": row["settings"],
            "window": window_model(row),
            "ab_test": row["ab_test"],
            "status": row["status"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "archived_at": row["archived_at"],
        }
    )


async def _sequence_row(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, ref: str, *, by_name: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(SQL["get_sequence"], tenant_id, ref, by_name)
    if row is None:
        raise not_found("Sequence")
    return row


async def _fetch_sequence(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, public_id: str
) -> SequenceModel:
    row = await _sequence_row(conn, tenant_id, public_id)
    return _sequence_model(row, await conn.fetch(SQL["get_steps"], [row["id"]]))


def _name_taken(name: str) -> ApiError:
    return ApiError(
        409,
        "CONFLICT",
        f"A sequence named {name!r} already exists",
        [{"field": "name", "message": "already exists"}],
    )


# -- Sequences ---------------------------------------------------------------------------------


@API.route(
    "POST",
    "/sequences",
    summary="Create a sequence of steps that stops when the contact replies",
    tag="Sequences",
    tier="starter",
    body=SequenceCreate,
    response=SequenceModel,
    status=201,
    errors=(409,),
)
async def create_sequence(call: Call[SequenceCreate, None]) -> SequenceModel:
    body = call.body
    tenant = call.principal.tenant_id
    from_email, from_name = await resolve_sender(call.pool, call.principal, body.from_)
    settings = settings_dict(body.settings, call.state.settings.mta.pools)
    await pool_ids(call.pool, call.principal.tenant_id, body.settings.identities)
    steps = await _resolve_steps(call.pool, tenant, body.steps)
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                SQL["insert_sequence"],
                tenant,
                body.name,
                from_email,
                from_name,
                _stop_on(body.stop_on),
                settings,
                *window_columns(body.window),
            )
        except asyncpg.UniqueViolationError:
            raise _name_taken(body.name) from None
        await _insert_steps(conn, row["id"], steps)
        await conn.execute(SQL["set_sequence_ab"], row["id"], _ab_test(body.ab_test, steps))
        return await _fetch_sequence(conn, tenant, row["public_id"])


@API.route(
    "GET",
    "/sequences",
    summary="List sequences, newest first",
    tag="Sequences",
    tier="starter",
    query=ListQuery,
    response=Page[SequenceModel],
)
async def list_sequences(call: Call[None, ListQuery]) -> Page[SequenceModel]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_sequences"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
    )
    steps: dict[int, list[asyncpg.Record]] = {}
    for step in await call.pool.fetch(SQL["get_steps"], [r["id"] for r in rows]):
        steps.setdefault(step["sequence_id"], []).append(step)
    return keyset_page(
        Page[SequenceModel], rows, query.limit, lambda r: _sequence_model(r, steps.get(r["id"], []))
    )


@API.route(
    "GET",
    "/sequences/{id}",
    summary="Get a sequence with its steps",
    tag="Sequences",
    tier="starter",
    response=SequenceModel,
    errors=(404,),
)
async def get_sequence(call: Call[None, None]) -> SequenceModel:
    return await _fetch_sequence(
        call.pool, call.principal.tenant_id, call.path_id("seq", "Sequence")
    )


@API.route(
    "PATCH",
    "/sequences/{id}",
    summary="Change a sequence; running enrolments continue with the new steps",
    tag="Sequences",
    tier="starter",
    body=SequenceUpdate,
    response=SequenceModel,
    errors=(404, 409),
)
async def update_sequence(call: Call[SequenceUpdate, None]) -> SequenceModel:
    body = call.body
    tenant = call.principal.tenant_id
    sequence_id = call.path_id("seq", "Sequence")
    given = body.model_fields_set
    for name in ("name", "steps", "stop_on", "settings"):
        if name in given and getattr(body, name) is None:
            raise validation_error([{"field": name, "message": "must not be null"}])
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["lock_sequence"], tenant, sequence_id)
        if row is None:
            raise not_found("Sequence")
        if row["status"] != "active":
            raise conflict("An archived sequence cannot be changed")
        from_email, from_name = row["from_email"], row["from_name"]
        if "from_" in given:
            from_email, from_name = await resolve_sender(conn, call.principal, body.from_)
        name = body.name if body.name is not None else row["name"]
        stop_on = _stop_on(body.stop_on) if body.stop_on is not None else row["stop_on"]
        settings = (
            settings_dict(body.settings, call.state.settings.mta.pools)
            if body.settings is not None
            else row["settings"]
        )
        if body.settings is not None:
            await pool_ids(conn, call.principal.tenant_id, body.settings.identities)
        window = window_columns(body.window) if "window" in given else stored_columns(row)
        try:
            await conn.execute(
                SQL["update_sequence"],
                row["id"],
                name,
                from_email,
                from_name,
                stop_on,
                settings,
                *window,
            )
        except asyncpg.UniqueViolationError:
            raise _name_taken(name) from None
        if body.steps is not None:
            steps = await _resolve_steps(conn, tenant, body.steps)
            await conn.execute(SQL["delete_steps"], row["id"])
            await _insert_steps(conn, row["id"], steps)
        if "ab_test" in given or body.steps is not None:
            current = await conn.fetch(SQL["get_steps"], [row["id"]])
            test = (
                _ab_test(body.ab_test, current)
                if "ab_test" in given
                else _ab_test(row["ab_test"], current)
            )
            await conn.execute(SQL["set_sequence_ab"], row["id"], test)
        return await _fetch_sequence(conn, tenant, sequence_id)


@API.route(
    "DELETE",
    "/sequences/{id}",
    summary="Archive a sequence: its running enrolments stop and their waiting steps are cancelled",
    tag="Sequences",
    tier="starter",
    response=SequenceModel,
    errors=(404,),
)
async def archive_sequence(call: Call[None, None]) -> SequenceModel:
    tenant = call.principal.tenant_id
    sequence_id = call.path_id("seq", "Sequence")
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["lock_sequence"], tenant, sequence_id)
        if row is None:
            raise not_found("Sequence")
        await conn.execute(SQL["archive_sequence"], row["id"])
        return await _fetch_sequence(conn, tenant, sequence_id)


# -- Enrolments --------------------------------------------------------------------------------


def personalization(contact: Mapping[str, Any]) -> dict[str, Any]:
    """What a step's templates are filled with: the contact's custom fields, then its own
    fields that are set (the scheduler's statement builds the same)."""
    own = {
        name: contact[name]
        for name in ("email", "first_name", "last_name", "company")
        if contact[name] is not None
    }
    return {**(contact["custom_fields"] or {}), **own}


async def _contacts_of(
    conn: asyncpg.Connection, tenant_id: int, refs: list[str]
) -> list[asyncpg.Record]:
    """The contacts `refs` name (ids or addresses, addresses created as contacts if new),
    in the request's order, once each; an unknown id is 404, a malformed entry 422."""
    ids: list[str] = []
    emails: list[str] = []
    errors: list[dict[str, str]] = []
    for i, ref in enumerate(refs):
        if "@" in ref:
            try:
                address_domain(ref, f"contacts[{i}]")
            except InvalidMessage as exc:
                errors.append({"field": exc.field, "message": exc.message})
            emails.append(ref.lower())
        elif is_public_id(ref, "contact"):
            ids.append(ref)
        else:
            errors.append(
                {"field": f"contacts[{i}]", "message": "a contact id (contact_...) or an address"}
            )
    if errors:
        raise validation_error(errors)
    rows = await conn.fetch(SQL["contacts_by_id"], tenant_id, ids) if ids else []
    if len(rows) != len(set(ids)):
        raise not_found("Contact")
    if emails:
        rows += await conn.fetch(SQL["ensure_contacts"], tenant_id, sorted(set(emails)))
    by_ref = {r["public_id"]: r for r in rows} | {r["email"]: r for r in rows}
    ordered: dict[int, asyncpg.Record] = {}
    for ref in refs:
        row = by_ref[ref if "@" not in ref else ref.lower()]
        ordered.setdefault(row["id"], row)
    return list(ordered.values())


async def _enroll(
    conn: asyncpg.Connection,
    tenant_id: int,
    sequence: asyncpg.Record,
    contacts: list[asyncpg.Record],
    re_enroll: bool,
    field: str = "contacts",
) -> list[Enrollment]:
    """Enrol `contacts` and queue their step 1, in the caller's transaction: a 409 naming
    each contact already enrolled, a 422 naming each whose fields a step's templates lack."""
    if sequence["status"] != "active":
        raise conflict("An archived sequence takes no enrolments")
    pks = [c["id"] for c in contacts]
    blocked = {
        r["contact_id"]
        for r in await conn.fetch(SQL["enrolled_contacts"], sequence["id"], pks, re_enroll)
    }
    if blocked:
        raise ApiError(
            409,
            "CONFLICT",
            f"{len(blocked)} contact(s) already enrolled in this sequence"
            + ("" if re_enroll else " (re_enroll: true enrols again once an enrolment ended)"),
            [
                {"field": f"{field}[{i}]", "message": f"{c['email']} is already enrolled"}
                for i, c in enumerate(contacts)
                if c["id"] in blocked
            ][:20],
        )
    _check_contacts(sequence, await conn.fetch(SQL["get_steps"], [sequence["id"]]), contacts, field)
    try:
        rows = await conn.fetch(SQL["insert_enrollments"], tenant_id, sequence["id"], pks)
    except asyncpg.UniqueViolationError:
        raise conflict("A contact was enrolled in this sequence meanwhile") from None
    ids = [r["id"] for r in rows]
    await schedule(conn, ids)
    return [Enrollment(**dict(r)) for r in await conn.fetch(SQL["get_enrollments"], ids)]


def _check_contacts(
    sequence: asyncpg.Record,
    steps: list[asyncpg.Record],
    contacts: list[asyncpg.Record],
    field: str,
) -> None:
    """Every step can be filled for every contact (a template variable without a default
    that a contact has no value for is refused now, not found missing at the MTA)."""
    recipients = [
        Recipient.model_construct(email=c["email"], personalization=personalization(c))
        for c in contacts
    ]
    first_subject = (steps[0]["subject"] or "") if steps else ""
    for step in steps:
        draft = new_draft(
            from_email=sequence["from_email"],
            from_name=sequence["from_name"],
            subject=step["subject"] or f"Re: {first_subject}",
            html=step["html_body"],
            text=step["text_body"],
            headers={},
            settings={},
        )
        try:
            check_draft(draft, recipients, prefix=field)
        except ApiError as exc:
            exc.details = [_name_contact(d, step["position"], contacts) for d in exc.details]
            raise


_ROW = re.compile(r"^\w+\[(\d+)\]")


def _name_contact(
    detail: dict[str, str], step: int, contacts: list[asyncpg.Record]
) -> dict[str, str]:
    """The step and the contact's address in the message: a contact found by tag has no
    index in the request, so its address is what names it."""
    row = _ROW.match(detail["field"])
    who = f"{contacts[int(row.group(1))]['email']}: " if row else ""
    return {**detail, "message": f"step {step}: {who}{detail['message']}"}


async def _campaign_contacts(
    conn: asyncpg.Connection, tenant_id: int, sequence_pk: int, campaign_id: str, re_enroll: bool
) -> tuple[list[asyncpg.Record], int]:
    """A campaign's recipients as contacts (created if new), less those already enrolled;
    and how many were left out as enrolled. An unknown campaign is a 404."""
    campaign = (
        await conn.fetchval(SQL["campaign_by_id"], tenant_id, campaign_id)
        if is_public_id(campaign_id, "campaign")
        else None
    )
    if campaign is None:
        raise not_found("Campaign")
    found = await conn.fetch(SQL["campaign_contacts"], tenant_id, campaign, MAX_TAG_ENROLL)
    blocked = {
        r["contact_id"]
        for r in await conn.fetch(
            SQL["enrolled_contacts"], sequence_pk, [c["id"] for c in found], re_enroll
        )
    }
    return [c for c in found if c["id"] not in blocked], len(blocked)


@API.route(
    "POST",
    "/sequences/{id}/enrollments",
    summary="Enrol contacts (by id, by address, by tag or a campaign's recipients); step 1 "
    "is queued at once",
    tag="Sequences",
    tier="starter",
    body=EnrollmentCreate,
    response=Enrolled,
    status=201,
    errors=(404, 409),
)
async def enroll(call: Call[EnrollmentCreate, None]) -> Enrolled:
    body = call.body
    tenant = call.principal.tenant_id
    sequence_id = call.path_id("seq", "Sequence")
    async with call.pool.acquire() as conn, conn.transaction():
        sequence = await _sequence_row(conn, tenant, sequence_id)
        contacts = await _contacts_of(conn, tenant, body.contacts) if body.contacts else []
        skipped = 0
        if body.tag is not None:
            tag_args = (tenant, body.tag, sequence["id"], body.re_enroll)
            chosen = {c["id"] for c in contacts}
            for row in await conn.fetch(SQL["contacts_by_tag"], *tag_args, MAX_TAG_ENROLL):
                if row["id"] not in chosen:
                    contacts.append(row)
            skipped = await conn.fetchval(SQL["tagged_enrolled"], *tag_args)
        if body.campaign_id is not None:
            found, left_out = await _campaign_contacts(
                conn, tenant, sequence["id"], body.campaign_id, body.re_enroll
            )
            chosen = {c["id"] for c in contacts}
            contacts += [c for c in found if c["id"] not in chosen]
            skipped += left_out
        await check_live_sender(conn, call.principal, call.state.settings, sequence["from_email"])
        items = await _enroll(conn, tenant, sequence, contacts, body.re_enroll) if contacts else []
        return Enrolled(items=items, skipped=skipped)


@API.route(
    "POST",
    "/contacts/{id}/sequences",
    summary="Enrol this contact in a sequence, named by id or by name (trigger_sequence)",
    tag="Sequences",
    tier="starter",
    body=ContactSequenceEnroll,
    response=Enrollment,
    status=201,
    errors=(404, 409),
)
async def trigger_sequence(call: Call[ContactSequenceEnroll, None]) -> Enrollment:
    body = call.body
    tenant = call.principal.tenant_id
    contact_id = call.path_id("contact", "Contact")
    async with call.pool.acquire() as conn, conn.transaction():
        sequence = await _sequence_row(
            conn, tenant, body.sequence, by_name=not is_public_id(body.sequence, "seq")
        )
        contacts = await conn.fetch(SQL["contacts_by_id"], tenant, [contact_id])
        if not contacts:
            raise not_found("Contact")
        await check_live_sender(conn, call.principal, call.state.settings, sequence["from_email"])
        (item,) = await _enroll(conn, tenant, sequence, list(contacts), body.re_enroll, "contact")
        return item


@API.route(
    "GET",
    "/sequences/{id}/enrollments",
    summary="List a sequence's enrolments, newest first: status, stop reason, step reached",
    tag="Sequences",
    tier="starter",
    query=EnrollmentQuery,
    response=Page[Enrollment],
    errors=(404,),
)
async def list_enrollments(call: Call[None, EnrollmentQuery]) -> Page[Enrollment]:
    query = call.query
    tenant = call.principal.tenant_id
    sequence = await _sequence_row(call.pool, tenant, call.path_id("seq", "Sequence"))
    rows = await call.pool.fetch(
        SQL["list_enrollments"],
        tenant,
        sequence["id"],
        decode_cursor(query.cursor, numeric=False),
        query.status,
        query.limit + 1,
    )
    return keyset_page(Page[Enrollment], rows, query.limit, lambda r: Enrollment(**dict(r)))


@API.route(
    "DELETE",
    "/sequences/{id}/enrollments/{enrollment}",
    summary="Stop an enrolment by hand; its waiting step is cancelled",
    tag="Sequences",
    tier="starter",
    response=Enrollment,
    errors=(404, 409),
)
async def stop_enrollment(call: Call[None, None]) -> Enrollment:
    tenant = call.principal.tenant_id
    sequence_id = call.path_id("seq", "Sequence")
    enrollment_id = call.path_id("enr", "Enrollment", name="enrollment")
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["lock_enrollment"], tenant, sequence_id, enrollment_id)
        if row is None:
            raise not_found("Enrollment")
        if row["status"] != "active":
            raise conflict(f"This enrolment is already {row['status']}")
        await conn.execute(SQL["stop_enrollment"], row["id"], "manual")
        (item,) = await conn.fetch(SQL["get_enrollments"], [row["id"]])
        return Enrollment(**dict(item))


@API.route(
    "GET",
    "/sequences/{id}/analytics",
    summary="A sequence's enrolments by status and, per step, messages sent, opened, "
    "clicked, replied, bounced and enrolments stopped there",
    tag="Sequences",
    tier="starter",
    response=SequenceAnalytics,
    errors=(404,),
)
async def sequence_analytics(call: Call[None, None]) -> SequenceAnalytics:
    sequence = await _sequence_row(
        call.pool, call.principal.tenant_id, call.path_id("seq", "Sequence")
    )
    counts = {"active": 0, "completed": 0, "stopped": 0}
    for row in await call.pool.fetch(SQL["enrollment_counts"], sequence["id"]):
        counts[row["status"]] = row["n"]
    steps = await call.pool.fetch(SQL["step_stats"], sequence["id"])
    defined = {s["position"]: s for s in await call.pool.fetch(SQL["get_steps"], [sequence["id"]])}
    by_variant = await step_variant_stats(call.pool, sequence["id"])
    return SequenceAnalytics(
        sequence_id=sequence["public_id"],
        enrollments=counts,
        steps=[
            SequenceStepStats(
                **dict(s),
                variants=[
                    VariantStats(**v)
                    for v in variant_results(
                        defined[s["step"]]["variants"], by_variant.get(s["step"], [])
                    )
                ],
                ab_winner=defined[s["step"]]["ab_winner"],
            )
            for s in steps
        ],
    )
