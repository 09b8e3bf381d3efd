"""Turning a queued message row into the bytes that go over the wire.

Rendering happens at delivery time from the row, so a retry produces the same message with
the same Message-ID. Bodies are serialised with CRLF line endings only: no bare LF or CR
reaches the wire (SMTP smuggling), and dot-stuffing stays the transport's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

# Headers the system writes itself; a caller's custom header may not replace them.
OWNED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Return-Path",
        "DKIM-Signature",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    )
)


class ComposeError(Exception):
    """The row cannot be made into a valid message; it fails instead of being retried."""


class Composer:
    """Renders queued rows for one MTA process; holds what rendering needs (settings, keys)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

    async def render(self, row: Mapping[str, Any]) -> tuple[str, bytes]:
        """The envelope sender and the message bytes; raises ComposeError."""
        return return_path(row, self._settings.mta.bounce_domain), compose(row)


def return_path(row: Mapping[str, Any], bounce_domain: str) -> str:
    """The envelope sender: a per-message address on the bounce domain (VERP)."""
    return f"b-{row['id']}@{bounce_domain}"


def compose(row: Mapping[str, Any], *, now: datetime | None = None) -> bytes:
    msg = EmailMessage(policy=SMTP)
    try:
        msg["From"] = Address(row["from_name"] or "", addr_spec=row["from_email"])
        msg["To"] = Address(addr_spec=row["recipient"])
        msg["Subject"] = row["subject"]
        msg["Date"] = format_datetime(now or datetime.now(UTC))
        msg["Message-ID"] = f"<{row['message_id']}>"
        for name, value in (row["headers"] or {}).items():
            if name.lower() in OWNED_HEADERS:
                continue
            msg[name] = value
    except (ValueError, TypeError) as exc:
        raise ComposeError(str(exc)) from exc
    text, html = row["text_body"], row["html_body"]
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    if text is None and html is None:
        msg.set_content("")
    return msg.as_bytes()
