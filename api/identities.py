"""Sending identities: who a campaign's or a sequence's messages are from, and at what pace.

An identity is a from address with a display name and a signature (appended to each message's
html and text), optionally sent through its own relay (a mailbox provider's submission
server, as cold senders use their Google Workspace or Microsoft 365 mailboxes) instead of our
MTA's direct path. Its pace: daily and hourly caps over rolling windows, a minimum gap between
sends plus a random part, and a warm-up ramp (`warmup.start` a day, `warmup.step` more for each
healthy day, up to the daily cap). The MTA's claim enforces all of it across every MTA process
(mta/queries.sql claim_batch); a message waiting on a cap says so in its
`held_reason`.

Rules at the door:
- The address must be on one of the tenant's sending domains (the sender rule of
  api/senders.py), unless the identity has its own relay: the relay's provider signs and
  answers for that address.
- A relay needs host, port, username and password; the password is sealed at rest with the
  server key (AES-GCM, bound to the identity) and never returned or logged, only whether one
  is set. The MTA talks to a relay only over TLS (STARTTLS or implicit TLS on 465).
- Pausing holds its messages (the claim moves them out of the way with the reason); resuming
  lets them go at once, within its caps. Archiving retires it: its waiting messages stay held
  rather than go out from an address the tenant gave up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from pydantic import Field, StringConstraints

from api.errors import ApiError, conflict, not_found, validation_error
from api.models import Email, ListQuery, Owned, Page, Request, Response, Sender
from api.routing import API, Call, decode_cursor, keyset_page
from api.senders import resolve_sender
from penguinmails.queries import load
from penguinmails.secrets import identity_relay_aad, seal, server_keys

SQL = load("api", "identities.sql")

OneLine = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
Host = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.\-\[\]:]+$")
]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Signature = Annotated[str, StringConstraints(max_length=20_000)]


class RelayIn(Request):
    host: Host
    port: int = Field(ge=1, le=65535, description="587 (STARTTLS) or 465 (implicit TLS).")
    username: OneLine = Field(min_length=1)
    password: Secret = Field(description="Sealed at rest; never returned.")


class WarmupIn(Request):
    start: int = Field(ge=1, le=100_000, description="Sends on its first day.")
    step: int = Field(
        default=0, ge=0, le=100_000, description="More a day for each healthy day after it."
    )


class SignatureIn(Request):
    html: Signature | None = None
    text: Signature | None = None


class IdentityFields(Request):
    name: OneLine = ""
    signature: SignatureIn | None = Field(
        default=None, description="Appended to each message's html and text parts."
    )
    relay: RelayIn | None = Field(
        default=None,
        description="Its own submission server (with AUTH over TLS); omitted: our MTA sends.",
    )
    daily_cap: int | None = Field(default=None, ge=1, le=1_000_000)
    hourly_cap: int | None = Field(default=None, ge=1, le=1_000_000)
    min_gap_seconds: int = Field(default=0, ge=0, le=86_400)
    random_gap_seconds: int = Field(
        default=0, ge=0, le=86_400, description="Up to this much more, at random, per gap."
    )
    warmup: WarmupIn | None = None


class IdentityCreate(IdentityFields):
    email: Email


class IdentityUpdate(Request):
    """Only the fields given change; `relay: null` removes the relay, `warmup: null` ends
    the ramp. A relay given without a password keeps the stored one."""

    email: Email | None = None
    name: OneLine | None = None
    signature: SignatureIn | None = None
    relay: RelayUpdate | None = None
    daily_cap: int | None = Field(default=None, ge=1, le=1_000_000)
    hourly_cap: int | None = Field(default=None, ge=1, le=1_000_000)
    min_gap_seconds: int | None = Field(default=None, ge=0, le=86_400)
    random_gap_seconds: int | None = Field(default=None, ge=0, le=86_400)
    warmup: WarmupIn | None = None


class RelayUpdate(Request):
    host: Host
    port: int = Field(ge=1, le=65535)
    username: OneLine = Field(min_length=1)
    password: Secret | None = None


IdentityUpdate.model_rebuild()


class PauseRequest(Request):
    reason: OneLine | None = None


class RelayOut(Response):
    host: str
    port: int
    username: str
    password_set: bool


class WarmupOut(Response):
    start: int
    step: int
    day: int = Field(description="Healthy days counted so far.")


class IdentityUsage(Response):
    sent_last_day: int
    sent_last_hour: int
    daily_limit: int | None = Field(description="Today's limit: the cap, or the warm-up ramp's.")
    held: int = Field(description="Its messages waiting on a cap, a gap or a pause.")
    next_send_at: datetime | None


class Identity(Owned):
    id: str
    email: str
    name: str
    signature: dict[str, str | None]
    relay: RelayOut | None
    daily_cap: int | None
    hourly_cap: int | None
    min_gap_seconds: int
    random_gap_seconds: int
    warmup: WarmupOut | None
    status: str = Field(description="active, paused or archived.")
    paused_reason: str | None
    usage: IdentityUsage
    created_at: datetime
    updated_at: datetime


def _model(row: asyncpg.Record) -> Identity:
    relay = None
    if row["relay_host"] is not None:
        relay = RelayOut(
            host=row["relay_host"],
            port=row["relay_port"],
            username=row["relay_username"] or "",
            password_set=row["relay_password"] is not None,
        )
    warmup = None
    if row["warmup_start"] is not None:
        warmup = WarmupOut(
            start=row["warmup_start"], step=row["warmup_step"], day=row["warmup_day"]
        )
    return Identity(
        id=row["public_id"],
        email=row["email"],
        name=row["name"],
        signature={"html": row["signature_html"], "text": row["signature_text"]},
        relay=relay,
        daily_cap=row["daily_cap"],
        hourly_cap=row["hourly_cap"],
        min_gap_seconds=row["min_gap_seconds"],
        random_gap_seconds=row["random_gap_seconds"],
        warmup=warmup,
        status=row["status"],
        paused_reason=row["paused_reason"],
        usage=IdentityUsage(
            sent_last_day=row["sent_last_day"],
            sent_last_hour=row["sent_last_hour"],
            daily_limit=row["daily_limit"],
            held=row["held"],
            next_send_at=row["next_send_at"],
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _fetch(conn: asyncpg.Connection | asyncpg.Pool, tenant: int, public_id: str) -> Identity:
    row = await conn.fetchrow(SQL["get_identity"], tenant, public_id)
    if row is None:
        raise not_found("Identity")
    return _model(row)


async def _check_address(call: Call[Any, Any], email: str, has_relay: bool) -> None:
    """The sender rule, unless the identity's own relay answers for its address."""
    if not has_relay:
        try:
            await resolve_sender(call.pool, call.principal, Sender(email=email))
        except ApiError as exc:
            raise validation_error(
                [{"field": "email", "message": d["message"]} for d in exc.details]
            ) from None


def _check_caps(daily: int | None, hourly: int | None, warmup: WarmupIn | None) -> None:
    if daily is not None and hourly is not None and hourly > daily:
        raise validation_error(
            [{"field": "hourly_cap", "message": f"must not exceed daily_cap ({daily})"}]
        )
    if warmup is not None and daily is not None and warmup.start > daily:
        raise validation_error(
            [{"field": "warmup.start", "message": f"must not exceed daily_cap ({daily})"}]
        )


def _email_taken(email: str) -> Exception:
    return conflict(f"an identity with the address {email} exists already")


@API.route(
    "POST",
    "/identities",
    summary="Create a sending identity: a from address with its own caps, pace and relay",
    tag="Identities",
    tier="starter",
    body=IdentityCreate,
    response=Identity,
    status=201,
    errors=(409,),
)
async def create_identity(call: Call[IdentityCreate, None]) -> Identity:
    body = call.body
    tenant = call.principal.tenant_id
    await _check_address(call, body.email, body.relay is not None)
    _check_caps(body.daily_cap, body.hourly_cap, body.warmup)
    signature = body.signature or SignatureIn()
    relay = body.relay
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                SQL["insert_identity"],
                tenant,
                body.email,
                body.name,
                signature.html,
                signature.text,
                relay.host if relay else None,
                relay.port if relay else None,
                relay.username if relay else None,
                body.daily_cap,
                body.hourly_cap,
                body.min_gap_seconds,
                body.random_gap_seconds,
                body.warmup.start if body.warmup else None,
                body.warmup.step if body.warmup else 0,
            )
        except asyncpg.UniqueViolationError:
            raise _email_taken(body.email) from None
        if relay is not None:
            sealed = seal(
                server_keys(call.state.settings),
                relay.password.encode(),
                identity_relay_aad(row["public_id"]),
            )
            await conn.execute(SQL["set_relay_password"], row["id"], sealed)
        return await _fetch(conn, tenant, row["public_id"])


@API.route(
    "GET",
    "/identities",
    summary="List sending identities with what their caps have used, newest first",
    tag="Identities",
    tier="starter",
    query=ListQuery,
    response=Page[Identity],
)
async def list_identities(call: Call[None, ListQuery]) -> Page[Identity]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_identities"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
    )
    return keyset_page(Page[Identity], rows, query.limit, _model)


@API.route(
    "GET",
    "/identities/{id}",
    summary="Get a sending identity with its usage today",
    tag="Identities",
    tier="starter",
    response=Identity,
    errors=(404,),
)
async def get_identity(call: Call[None, None]) -> Identity:
    return await _fetch(call.pool, call.principal.tenant_id, call.path_id("idn", "Identity"))


@API.route(
    "PATCH",
    "/identities/{id}",
    summary="Change an identity; new caps apply to its waiting messages at once",
    tag="Identities",
    tier="starter",
    body=IdentityUpdate,
    response=Identity,
    errors=(404, 409),
)
async def update_identity(call: Call[IdentityUpdate, None]) -> Identity:
    body = call.body
    given = body.model_fields_set
    tenant = call.principal.tenant_id
    public_id = call.path_id("idn", "Identity")
    current = await call.pool.fetchrow(SQL["get_identity"], tenant, public_id)
    if current is None or current["status"] == "archived":
        raise not_found("Identity")

    def pick(name: str, stored: Any) -> Any:
        return getattr(body, name) if name in given else stored

    email = pick("email", current["email"])
    if email is None:
        raise validation_error([{"field": "email", "message": "must not be null"}])
    relay = body.relay if "relay" in given else None
    keep_relay = "relay" not in given and current["relay_host"] is not None
    has_relay = relay is not None or keep_relay
    if relay is not None and relay.password is None and current["relay_password"] is None:
        raise validation_error([{"field": "relay.password", "message": "required"}])
    await _check_address(call, email, has_relay)
    daily = pick("daily_cap", current["daily_cap"])
    hourly = pick("hourly_cap", current["hourly_cap"])
    if "warmup" in given:
        warmup = body.warmup
    elif current["warmup_start"] is not None:
        warmup = WarmupIn(start=current["warmup_start"], step=current["warmup_step"])
    else:
        warmup = None
    _check_caps(daily, hourly, warmup)
    signature = body.signature if "signature" in given else None
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                SQL["update_identity"],
                tenant,
                public_id,
                email,
                pick("name", current["name"]) or "",
                signature.html if signature else current["signature_html"],
                signature.text if signature else current["signature_text"],
                relay.host if relay else (current["relay_host"] if keep_relay else None),
                relay.port if relay else (current["relay_port"] if keep_relay else None),
                relay.username if relay else (current["relay_username"] if keep_relay else None),
                daily,
                hourly,
                pick("min_gap_seconds", current["min_gap_seconds"]) or 0,
                pick("random_gap_seconds", current["random_gap_seconds"]) or 0,
                warmup.start if warmup else None,
                warmup.step if warmup else 0,
            )
        except asyncpg.UniqueViolationError:
            raise _email_taken(email) from None
        if row is None:
            raise not_found("Identity")
        if relay is not None and relay.password is not None:
            sealed = seal(
                server_keys(call.state.settings),
                relay.password.encode(),
                identity_relay_aad(public_id),
            )
            await conn.execute(SQL["set_relay_password"], row["id"], sealed)
        elif not has_relay:
            await conn.execute(SQL["clear_relay_password"], row["id"])
        # New caps may let held messages go now; the claim recounts.
        await conn.execute(SQL["release_identity_holds"], row["id"])
        return await _fetch(conn, tenant, public_id)


@API.route(
    "POST",
    "/identities/{id}/pause",
    summary="Pause an identity: its messages wait until it is resumed",
    tag="Identities",
    tier="starter",
    body=PauseRequest,
    body_optional=True,
    response=Identity,
    errors=(404,),
)
async def pause_identity(call: Call[PauseRequest, None]) -> Identity:
    tenant = call.principal.tenant_id
    public_id = call.path_id("idn", "Identity")
    row = await call.pool.fetchrow(
        SQL["pause_identity"], tenant, public_id, call.body.reason or "paused by hand"
    )
    if row is None:
        raise not_found("Identity")
    return await _fetch(call.pool, tenant, public_id)


@API.route(
    "POST",
    "/identities/{id}/resume",
    summary="Resume an identity (after a pause or the circuit breaker): its messages go again",
    tag="Identities",
    tier="starter",
    response=Identity,
    errors=(404,),
)
async def resume_identity(call: Call[None, None]) -> Identity:
    tenant = call.principal.tenant_id
    public_id = call.path_id("idn", "Identity")
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SQL["resume_identity"], tenant, public_id)
        if row is None:
            raise not_found("Identity")
        await conn.execute(SQL["release_identity_holds"], row["id"])
        return await _fetch(conn, tenant, public_id)


@API.route(
    "DELETE",
    "/identities/{id}",
    summary="Archive an identity: it sends no more; its waiting messages stay held",
    tag="Identities",
    tier="starter",
    response=Identity,
    errors=(404,),
)
async def archive_identity(call: Call[None, None]) -> Identity:
    tenant = call.principal.tenant_id
    public_id = call.path_id("idn", "Identity")
    row = await call.pool.fetchrow(SQL["archive_identity"], tenant, public_id)
    if row is None:
        raise not_found("Identity")
    return await _fetch(call.pool, tenant, public_id)


async def pool_ids(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: int,
    public_ids: list[str],
    field: str = "settings.identities",
) -> list[int]:
    """A campaign's or sequence's identity pool as row ids, in the order given; an unknown,
    foreign or archived id is a 422 naming it."""
    if not public_ids:
        return []
    rows = await conn.fetch(SQL["identity_ids"], tenant, public_ids)
    found = {r["public_id"]: r["id"] for r in rows}
    for i, public_id in enumerate(public_ids):
        if public_id not in found:
            raise validation_error(
                [{"field": f"{field}[{i}]", "message": f"no identity {public_id}"}]
            )
    return [found[p] for p in dict.fromkeys(public_ids)]


async def pool_public_ids(conn: asyncpg.Connection | asyncpg.Pool, ids: list[int]) -> list[str]:
    if not ids:
        return []
    rows = {r["id"]: r["public_id"] for r in await conn.fetch(SQL["identity_public_ids"], ids)}
    return [rows[i] for i in ids if i in rows]


async def assign(
    conn: asyncpg.Connection, tenant: int, public_ids: list[str], message_ids: list[int]
) -> None:
    """Spread a campaign's new messages over its identity pool (in the caller's transaction,
    so a pool with no active identity left refuses the whole send)."""
    if not public_ids or not message_ids:
        return
    taking = await conn.fetchval(SQL["assign_identities"], tenant, public_ids, message_ids)
    if not taking:
        raise validation_error(
            [
                {
                    "field": "settings.identities",
                    "message": "none of these identities is active (resume one, or change "
                    "the campaign's identities)",
                }
            ]
        )
