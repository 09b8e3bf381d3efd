"""Putting messages on the queue: the one way in, used by the CLI and the API alike.

A message is a committed row before anyone is told it was accepted; the insert is a
single statement, so a batch is all in or all out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from penguinmails import template
from penguinmails.queries import load

SQL = load("penguinmails", "sql/queries.sql")

# Deliberately strict: what we put in an SMTP envelope must be plain and unambiguous.
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$")


class InvalidMessage(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def address_domain(address: str, field_name: str) -> str:
    """The domain of a plain address, lower-cased; refuses anything an envelope can't carry."""
    match = _ADDRESS.match(address)
    if not match or len(address) > 254:
        raise InvalidMessage(field_name, "Invalid email format")
    return match.group(1).lower()


def _no_line_breaks(value: str, field_name: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidMessage(field_name, "must not contain CR or LF (header injection)")


@dataclass
class Draft:
    from_email: str
    subject: str
    recipients: Sequence[str]
    text: str | None = None
    html: str | None = None
    from_name: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    personalization: Sequence[Mapping[str, Any]] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    campaign_id: int | None = None
    send_at: datetime | None = None
    sandbox: bool = False  # test mode: delivered to the capture sink, never to real MX hosts

    def validate(self) -> tuple[str, list[str]]:
        sender_domain = address_domain(self.from_email, "from")
        domains = [address_domain(r, f"recipients[{i}]") for i, r in enumerate(self.recipients)]
        _no_line_breaks(self.subject, "subject")
        _no_line_breaks(self.from_name, "from_name")
        for name, value in self.headers.items():
            _no_line_breaks(name, f"headers.{name}")
            _no_line_breaks(value, f"headers.{name}")
        if self.text is None and self.html is None:
            raise InvalidMessage("content", "text or html is required")
        if self.personalization is not None and len(self.personalization) != len(self.recipients):
            raise InvalidMessage("personalization", "one entry per recipient")
        self._check_templates()
        return sender_domain, domains

    def _check_templates(self) -> None:
        """Every recipient has a value for every variable without a default: a missing one
        is an error now, not a blank in a sent email."""
        fields = {"subject": self.subject, "text": self.text, "html": self.html}
        for field_name, source in fields.items():
            try:
                if source is not None:
                    template.compile(source)
            except template.TemplateError as exc:
                raise InvalidMessage(field_name, str(exc)) from None
        subject = template.compile(self.subject)
        for i, values in enumerate(self.personalization or [{}] * len(self.recipients)):
            try:
                template.check(fields, values)
            except template.TemplateError as exc:
                raise InvalidMessage(f"personalization[{i}]", str(exc)) from None
            for name in subject.names:  # a personalised value could smuggle in a header
                value = template.lookup(values, name)
                if value is not None:
                    _no_line_breaks(str(value), f"personalization[{i}].{name}")


def new_message_id(sender_domain: str) -> str:
    return f"{uuid.uuid4().hex}@{sender_domain}"


async def ensure_tenant(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, tier: str | None = None
) -> int:
    tenant_id: int = await conn.fetchval(SQL["ensure_tenant"], name, tier)
    return tenant_id


async def enqueue(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, draft: Draft
) -> list[int]:
    """Validate, then insert one queued message per recipient; returns their ids."""
    sender_domain, domains = draft.validate()
    personalization = list(draft.personalization or [{} for _ in draft.recipients])
    ids = [new_message_id(sender_domain) for _ in draft.recipients]
    rows = await conn.fetch(
        SQL["enqueue_messages"],
        tenant_id,
        draft.campaign_id,
        draft.from_email,
        draft.from_name,
        draft.subject,
        draft.text,
        draft.html,
        dict(draft.headers),
        dict(draft.settings),
        draft.send_at,
        ids,
        list(draft.recipients),
        domains,
        personalization,
        draft.sandbox,
    )
    return [row["id"] for row in rows]
