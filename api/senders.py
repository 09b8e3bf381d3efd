"""Who a message is from, and checking a send before anything is written.

Sender rule:
- A `from` must be on one of the tenant's sending domains (exact domain, not a subdomain).
- A domain registered by another tenant is refused whatever the mode.
- Without `from`, the default sender of the caller's mode is used: the one set with
  `PUT /api/v1/settings/sender` (checked by the same rule when it is set and again at each
  use, since a domain can be removed), else `noreply@` the tenant's first registered domain.
- A tenant with no sending domain yet may send in test mode (sandbox: nothing leaves the
  machine) from any address, by default `noreply@sandbox.penguinmails.invalid`; in live mode
  it is told how to set a sender first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from api.auth import Principal
from api.errors import validation_error
from api.models import DefaultSender, DefaultSenderSet, Recipient, Sender
from api.routing import API, Call
from penguinmails.config import Settings
from penguinmails.deliverability import GATING
from penguinmails.messages import Draft, InvalidMessage, address_domain
from penguinmails.queries import load

SQL = load("api")
DOMAIN_SQL = load("api", "domains.sql")
MAX_DETAILS = 100
DEFAULT_LOCAL_PART = "noreply"


SANDBOX_SENDER = f"{DEFAULT_LOCAL_PART}@sandbox.penguinmails.invalid"
HOW_TO_SET = (
    "give `from`, or set a default sender with PUT /api/v1/settings/sender "
    "(its domain must be a sending domain: penguinmails domains add DOMAIN --tenant NAME)"
)


async def _check_verified(
    conn: asyncpg.Connection | asyncpg.Pool,
    principal: Principal,
    settings: Settings | None,
    domain: str,
) -> None:
    if settings is None or not settings.mta.require_verified_domains or principal.sandbox:
        return
    row = await conn.fetchrow(DOMAIN_SQL["domain_verification"], domain, principal.account_id)
    if row is not None and row["sending_allowed"]:
        return
    if row is None or row["status"] == "pending":
        why = "has not been verified yet"
    else:
        failed = [
            f"{c['name']} ({c['fix']})"
            for c in row["checks"]
            if c["status"] == "fail" and c["name"].partition(":")[0] in GATING
        ]
        why = "fails its DNS checks: " + "; ".join(failed)
    raise validation_error(
        [
            {
                "field": "from.email",
                "message": f"{domain} {why}; live mail from it would be refused by receivers. "
                f"Fix its DNS and run `penguinmails domains verify {domain}` "
                f"(or GET /api/v1/domains/{domain})",
            }
        ]
    )


async def check_live_sender(
    conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, settings: Settings, email: str
) -> None:
    """The door for messages whose sender was resolved earlier (a sequence's steps): a live
    sender's domain must pass its checks, as in resolve_sender."""
    await _check_verified(conn, principal, settings, email.rpartition("@")[2].lower())


async def resolve_sender(
    conn: asyncpg.Connection | asyncpg.Pool,
    principal: Principal,
    sender: Sender | None,
    field: str = "from",
    settings: Settings | None = None,
) -> tuple[str, str]:
    """(from_email, from_name) the message will carry, or a 422 naming `from`.

    With `settings` whose `[mta] require_verified_domains` is on, a live sender's domain must
    have passed its DKIM and DMARC checks (penguinmails.deliverability), else 422 naming the
    domain and the failed checks: refused at the door, never accepted for the MTA to refuse.
    """
    if sender is None:
        stored = await conn.fetchrow(SQL["default_sender"], principal.tenant_id)
        if stored is not None and stored["default_from_email"] is not None:
            sender = Sender.model_construct(
                email=stored["default_from_email"], name=stored["default_from_name"]
            )
            field = "settings.sender"
    wanted = address_domain(sender.email, field) if sender is not None else None
    # Sending domains belong to the account, shared by both its modes.
    rows = await conn.fetch(SQL["sender_domains"], principal.account_id, wanted)
    own = [r["domain"] for r in rows if r["own"]]
    if sender is None:
        if own:
            await _check_verified(conn, principal, settings, own[0])
            return f"{DEFAULT_LOCAL_PART}@{own[0]}", ""
        if principal.sandbox:
            return SANDBOX_SENDER, ""
        raise validation_error(
            [{"field": "from", "message": f"required: there is no default sender ({HOW_TO_SET})"}]
        )
    if wanted is not None and wanted in own:
        await _check_verified(conn, principal, settings, wanted)
        return sender.email, sender.name
    taken = any(r["domain"] == wanted and not r["own"] for r in rows)
    if not own and not taken and principal.sandbox:
        return sender.email, sender.name
    hint = f"one of: {', '.join(own)}" if own else "register one with `penguinmails domains add`"
    raise validation_error(
        [
            {
                "field": f"{field}.email",
                "message": f"{wanted} is not one of your sending domains ({hint})",
            }
        ]
    )


@API.route(
    "GET",
    "/settings/sender",
    summary="The sender a message gets when it names none (this mode's)",
    tag="Settings",
    response=DefaultSender,
)
async def get_default_sender(call: Call[None, None]) -> DefaultSender:
    return await _effective(call)


@API.route(
    "PUT",
    "/settings/sender",
    summary="Set this mode's default sender; its domain must be one of your sending domains",
    tag="Settings",
    body=DefaultSenderSet,
    response=DefaultSender,
)
async def set_default_sender(call: Call[DefaultSenderSet, None]) -> DefaultSender:
    email, name = await resolve_sender(call.pool, call.principal, call.body.from_)
    await call.pool.execute(SQL["set_default_sender"], call.principal.tenant_id, email, name)
    return await _effective(call)


@API.route(
    "DELETE",
    "/settings/sender",
    summary="Clear this mode's default sender (back to noreply@ your first sending domain)",
    tag="Settings",
    response=DefaultSender,
)
async def clear_default_sender(call: Call[None, None]) -> DefaultSender:
    await call.pool.execute(SQL["set_default_sender"], call.principal.tenant_id, None, "")
    return await _effective(call)


async def _effective(call: Call) -> DefaultSender:
    stored = await call.pool.fetchrow(SQL["default_sender"], call.principal.tenant_id)
    if stored is not None and stored["default_from_email"] is not None:
        return DefaultSender(
            email=stored["default_from_email"], name=stored["default_from_name"], source="set"
        )
    rows = await call.pool.fetch(SQL["sender_domains"], call.principal.account_id, None)
    own = [r["domain"] for r in rows if r["own"]]
    if own:
        return DefaultSender(email=f"{DEFAULT_LOCAL_PART}@{own[0]}", name="", source="domain")
    if call.principal.sandbox:
        return DefaultSender(email=SANDBOX_SENDER, name="", source="sandbox")
    return DefaultSender(email=None, name="", source="none")


_GLOBAL_FIELDS = {
    "from": "from.email",
    "from_name": "from.name",
    "text": "content.text",
    "html": "content.html",
}


def _global_field(name: str) -> str:
    return _GLOBAL_FIELDS.get(name, name)


def _row_field(name: str, prefix: str, index: int) -> str:
    """Map Draft's field names for a one-recipient draft to the request's paths."""
    if name.startswith("recipients[0]"):
        return f"{prefix}[{index}].email"
    if name.startswith("personalization[0]"):
        return f"{prefix}[{index}].personalization" + name[len("personalization[0]") :]
    return _global_field(name)


def check_draft(draft: Draft, recipients: Sequence[Recipient], prefix: str = "recipients") -> None:
    """Everything enqueue would refuse, refused now, with every bad recipient by its index.

    The content is checked once; then each recipient alone (its address, and a value for
    every template variable without a default). Templates are compiled once and cached, so
    10,000 recipients cost milliseconds.
    """
    if draft.text is None and draft.html is None:
        raise validation_error([{"field": "content", "message": "text or html is required"}])
    try:
        dataclasses.replace(draft, recipients=[], personalization=[]).validate()
    except InvalidMessage as exc:
        raise validation_error(
            [{"field": _global_field(exc.field), "message": exc.message}]
        ) from None
    details: list[dict[str, str]] = []
    invalid = 0
    for i, recipient in enumerate(recipients):
        one = dataclasses.replace(
            draft, recipients=[recipient.email], personalization=[recipient.personalization]
        )
        try:
            one.validate()
        except InvalidMessage as exc:
            invalid += 1
            if len(details) < MAX_DETAILS:
                details.append({"field": _row_field(exc.field, prefix, i), "message": exc.message})
    if details:
        raise validation_error(
            details,
            message=f"{invalid} of {len(recipients)} recipients are invalid"
            + (f" (the first {MAX_DETAILS} are listed)" if invalid > MAX_DETAILS else ""),
        )
