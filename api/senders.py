"""Who a message is from, and checking a send before anything is written.

Sender rule:
- A `from` must be on one of the tenant's sending domains (exact domain, not a subdomain).
- A domain registered by another tenant is refused whatever the mode.
- Without `from`, the default sender is `noreply@` the tenant's first registered domain.
- A tenant with no sending domain yet may send in test mode (sandbox: nothing leaves the
  machine) from any address; in live mode it is told to register a domain first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from api.auth import Principal
from api.errors import validation_error
from api.models import Recipient, Sender
from penguinmails.messages import Draft, InvalidMessage, address_domain
from penguinmails.queries import load

SQL = load("api")
MAX_DETAILS = 100
DEFAULT_LOCAL_PART = "noreply"


async def resolve_sender(
    conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, sender: Sender | None
) -> tuple[str, str]:
    """(from_email, from_name) the message will carry, or a 422 naming `from`."""
    wanted = address_domain(sender.email, "from") if sender is not None else None
    # Sending domains belong to the account, shared by both its modes.
    rows = await conn.fetch(SQL["sender_domains"], principal.account_id, wanted)
    own = [r["domain"] for r in rows if r["own"]]
    if sender is None:
        if own:
            return f"{DEFAULT_LOCAL_PART}@{own[0]}", ""
        if principal.sandbox:
            return f"{DEFAULT_LOCAL_PART}@sandbox.penguinmails.invalid", ""
        raise validation_error(
            [
                {
                    "field": "from",
                    "message": "required: no sending domain is registered "
                    "(penguinmails domains add DOMAIN --tenant NAME)",
                }
            ]
        )
    if wanted in own:
        return sender.email, sender.name
    taken = any(r["domain"] == wanted and not r["own"] for r in rows)
    if not own and not taken and principal.sandbox:
        return sender.email, sender.name
    hint = f"one of: {', '.join(own)}" if own else "register one with `penguinmails domains add`"
    raise validation_error(
        [
            {
                "field": "from.email",
                "message": f"{wanted} is not one of your sending domains ({hint})",
            }
        ]
    )


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


def refuse_template_id(template_id: str | None) -> None:
    if template_id is not None:
        raise validation_error(
            [
                {
                    "field": "content.template_id",
                    "message": "unknown template (there is no "
                    "template store yet: send html and/or text)",
                }
            ]
        )
