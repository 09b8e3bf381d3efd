"""Putting messages on the queue: the one way in, used by the CLI and the API alike.

A message is a committed row before anyone is told it was accepted; the insert is a
single statement, so a batch is all in or all out, and it records each message's
`email.sent` event (accepted and queued for delivery) with it. `email.delivered` comes later,
from the MTA, when the receiving server answers 250.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from penguinmails import template
from penguinmails.html_text import pixel_left_out
from penguinmails.queries import load

if TYPE_CHECKING:
    from penguinmails.attachments import Attachment

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


# Headers the system writes itself (or a receiver adds on the way in): a caller may not set
# them, since each one either breaks the message (a second From, a forged DKIM-Signature) or
# lies to the recipient's mail system (Authentication-Results, Received, ARC-*).
OWNED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Sender",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Return-Path",
        "DKIM-Signature",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Feedback-ID",
        "Authentication-Results",
        "Received",
    )
)
OWNED_HEADER_PREFIXES = ("arc-",)


def owned_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in OWNED_HEADERS or lowered.startswith(OWNED_HEADER_PREFIXES)


# C0 controls and DEL, but tab: nothing a header line can carry, and nothing a mail client
# shows. CR and LF are named apart, as the classic header injection.
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# In html, tab, LF, FF and CR are white space; any other control is a parse error in every
# browser, and in a link it breaks the signed click token.
_HTML_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# In a personalization value, which may fill a body: the header set, less CR and LF.
_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Personalization is data to fill templates with: bounded, so one request cannot make the
# server recurse or allocate without limit.
MAX_PERSONALIZATION_DEPTH = 8
MAX_PERSONALIZATION_BYTES = 64 * 1024
# Tags and metadata ride along in every webhook of the message: small, so they cannot bloat
# a payload that is signed and sent many times.
MAX_TAGS = 10
MAX_TAG_CHARS = 64
MAX_METADATA_KEYS = 20
MAX_METADATA_KEY_CHARS = 40
MAX_METADATA_BYTES = 2048


def _no_controls(value: str, field_name: str, controls: re.Pattern[str]) -> None:
    control = controls.search(value)
    if control is not None:
        raise InvalidMessage(
            field_name, f"must not contain control characters (U+{ord(control.group()):04X})"
        )


def _no_line_breaks(value: str, field_name: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidMessage(field_name, "must not contain CR or LF (header injection)")
    _no_controls(value, field_name, _HEADER_CONTROL)


def check_personalization(values: Any, field_name: str, depth: int = 0) -> None:
    """Refuses nesting past MAX_PERSONALIZATION_DEPTH and control characters in any string
    (a value may land in a header, a link or a body: none of them can carry one)."""
    if depth > MAX_PERSONALIZATION_DEPTH:
        raise InvalidMessage(field_name, f"nested more than {MAX_PERSONALIZATION_DEPTH} levels")
    if isinstance(values, str):
        _no_controls(values, field_name, _VALUE_CONTROL)
    elif isinstance(values, dict):
        for key, value in values.items():
            check_personalization(value, f"{field_name}.{key}", depth + 1)
    elif isinstance(values, list):
        for index, value in enumerate(values):
            check_personalization(value, f"{field_name}[{index}]", depth + 1)


Priority = Literal["transactional", "bulk"]
PRIORITIES: dict[str, int] = {"transactional": 0, "bulk": 1}  # messages.priority


@dataclass(frozen=True, slots=True)
class Address:
    """A header address: what a To, Cc or Reply-To list shows, with its display name."""

    email: str
    name: str = ""

    def as_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name}


def _check_addresses(addresses: Sequence[Address], field_name: str) -> None:
    for i, address in enumerate(addresses):
        address_domain(address.email, f"{field_name}[{i}].email")
        _no_line_breaks(address.name, f"{field_name}[{i}].name")


def check_tags(tags: Sequence[str], field_name: str = "tags") -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidMessage(field_name, f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if not 1 <= len(tag) <= MAX_TAG_CHARS:
            raise InvalidMessage(f"{field_name}[{i}]", f"1 to {MAX_TAG_CHARS} characters")
        _no_line_breaks(tag, f"{field_name}[{i}]")


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
    # The visible To and Cc lists every recipient's copy shows; None: To is the recipient
    # (a campaign's one-recipient-per-message form). Bcc recipients are in `recipients` only.
    to_header: Sequence[Address] | None = None
    cc_header: Sequence[Address] = ()
    reply_to: Sequence[Address] = ()
    tags: Sequence[str] = ()
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    attachments: Sequence[Attachment] = ()
    # Which goes first when the MTA claims: transactional (single sends, batches) before bulk
    # (campaigns); see mta/queries.sql claim_batch.
    priority: Priority = "bulk"

    def validate(self) -> tuple[str, list[str]]:
        sender_domain = address_domain(self.from_email, "from")
        domains = [address_domain(r, f"recipients[{i}]") for i, r in enumerate(self.recipients)]
        _no_line_breaks(self.subject, "subject")
        _no_line_breaks(self.from_name, "from_name")
        for name, value in self.headers.items():
            _no_line_breaks(name, f"headers.{name}")
            _no_line_breaks(value, f"headers.{name}")
            if owned_header(name):
                raise InvalidMessage(
                    f"headers.{name}", "is set by PenguinMails and cannot be given"
                )
        _check_addresses(self.to_header or (), "to")
        _check_addresses(self.cc_header, "cc")
        _check_addresses(self.reply_to, "reply_to")
        check_tags(self.tags)
        if self.text is None and self.html is None:
            raise InvalidMessage("content", "text or html is required")
        if self.html is not None:
            _no_controls(self.html, "html", _HTML_CONTROL)
        if self.personalization is not None and len(self.personalization) != len(self.recipients):
            raise InvalidMessage("personalization", "one entry per recipient")
        self._check_templates()
        if self.attachments:
            from penguinmails import attachments  # it imports this module

            attachments.check(self.attachments)
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
            check_personalization(values, f"personalization[{i}]")
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
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    tier: str | None = None,
    mode: str = "live",
) -> int:
    """The id of tenant `name`'s row for `mode` (created, with its twin, if new)."""
    account_id: int = await conn.fetchval(SQL["ensure_tenant"], name, tier)
    return await mode_tenant(conn, account_id, mode)


async def find_tenant(conn: asyncpg.Connection | asyncpg.Pool, name: str, mode: str) -> int | None:
    """The tenant row of `name` for `mode`, or None: unlike ensure_tenant, creates nothing."""
    account_id: int | None = await conn.fetchval(SQL["find_tenant"], name)
    return None if account_id is None else await mode_tenant(conn, account_id, mode)


async def mode_tenant(conn: asyncpg.Connection | asyncpg.Pool, account_id: int, mode: str) -> int:
    """The tenant row holding `mode`'s objects of the account whose live row is `account_id`."""
    if mode == "live":
        return account_id
    tenant_id: int = await conn.fetchval(SQL["mode_tenant"], account_id, mode)
    return tenant_id


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    public_id: str
    recipient: str
    suppressed: bool  # on the suppression list now: the MTA will record it email.suppressed


def tracking_settings(settings: Mapping[str, Any], html: str | None) -> dict[str, Any]:
    """The settings a message is queued with, its tracking state written out: an html
    send that asked for opens but is too short to carry the pixel (html_text.pixel_left_out)
    says so in `open_pixel: false` and `open_pixel_left_out` (the reason), one that carries it
    in `open_pixel: true`; the composer honours it and GET /messages/{id} shows it. Decided
    once per draft from its html template (variables count as the expressions written), so
    every recipient's copy agrees."""
    written = dict(settings)
    if html is None or written.get("plain_text") is True or written.get("track_opens") is not True:
        return written
    reason = pixel_left_out(html)
    written["open_pixel"] = reason is None
    if reason is not None:
        written["open_pixel_left_out"] = reason
    return written


async def enqueue(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, draft: Draft
) -> list[int]:
    """Validate, then insert one queued message per recipient, each with its `email.sent`
    event (not for a recipient already suppressed), in one round trip; returns their ids."""
    return [q.id for q in await enqueue_draft(conn, tenant_id, draft)]


async def enqueue_draft(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, draft: Draft
) -> list[Queued]:
    """enqueue(), answering each row's public id and whether its recipient is suppressed,
    in the recipients' order."""
    sender_domain, domains = draft.validate()
    if draft.attachments:
        async with _transaction(conn) as tx:
            return await _enqueue_with_attachments(tx, tenant_id, draft, sender_domain, domains)
    return await _enqueue(conn, tenant_id, draft, sender_domain, domains)


async def _enqueue(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: int,
    draft: Draft,
    sender_domain: str,
    domains: list[str],
) -> list[Queued]:
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
        tracking_settings(draft.settings, draft.html),
        draft.send_at,
        ids,
        list(draft.recipients),
        domains,
        personalization,
        draft.sandbox,
        None if draft.to_header is None else [a.as_json() for a in draft.to_header],
        [a.as_json() for a in draft.cc_header] or None,
        [a.as_json() for a in draft.reply_to] or None,
        list(draft.tags),
        dict(draft.metadata),
        PRIORITIES[draft.priority],
    )
    return [Queued(r["id"], r["public_id"], r["recipient"], r["suppressed"]) for r in rows]


async def _enqueue_with_attachments(
    conn: asyncpg.Connection,
    tenant_id: int,
    draft: Draft,
    sender_domain: str,
    domains: list[str],
) -> list[Queued]:
    """The bytes (once), the messages, and the link between them: all or nothing."""
    from penguinmails import attachments  # it imports this module

    await attachments.check_executables(conn, tenant_id, draft.attachments)
    refs = await attachments.store(conn, tenant_id, draft.attachments)
    queued = await _enqueue(conn, tenant_id, draft, sender_domain, domains)
    await conn.execute(SQL["link_attachments"], [q.id for q in queued], refs)
    return queued


@contextlib.asynccontextmanager
async def _transaction(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on `conn` (a savepoint inside the caller's), or on one from the pool."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired, acquired.transaction():
            yield acquired
    else:
        async with conn.transaction():
            yield conn
