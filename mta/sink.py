"""The capture sink: an SMTP server that keeps what it receives instead of delivering it.

`penguinmails up` routes every message here (sandbox mode), and so does the MTA for messages
sent with a test-mode key, so a first run never sends mail to the outside world. A message
is answered 250 only once it is a committed row.

It takes only what our MTA delivers: the envelope sender must be a signed VERP return path
(the one the MTA writes) naming a queue message that exists, that the MTA is delivering now
(status 'sending': a replay of an old envelope is not), and that is a test-mode message
(under `up`, where every message is routed here, any message of ours); the one recipient is
that message's recipient. Anything else is refused with 550 5.7.1 at MAIL FROM or RCPT, so
nobody who can reach the port can put mail in a tenant's sandbox inbox. A capture is filed
under the queue message's tenant, read from the messages row, never from what the client
said; the API's sandbox inbox shows a tenant only its own captures.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from penguinmails.config import Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load
from penguinmails.verp import Verp

SQL = load("mta")

log = logging.getLogger(__name__)

_UNAVAILABLE = "451 4.3.0 sandbox storage unavailable, try again"


class CaptureHandler:
    """`any_message`: take every message of ours (sandbox mode), not only test-mode ones."""

    def __init__(self, pool: asyncpg.Pool, verp: Verp, *, any_message: bool = False) -> None:
        self._pool = pool
        self._verp = verp
        self._any_message = any_message
        # The queue message MAIL FROM named, per transaction (aiosmtpd makes a new envelope
        # after each DATA and on RSET, which then drops out of here by itself).
        self._messages: weakref.WeakKeyDictionary[Envelope, asyncpg.Record] = (
            weakref.WeakKeyDictionary()
        )

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        queue_id = self._verp.decode(address) if address else None
        if queue_id is None:
            return _refuse(session, address, "only mail from our MTA (signed return path)")
        try:
            row = await self._pool.fetchrow(SQL["sink_message"], queue_id)
        except DATABASE_ERRORS as exc:
            log.warning(
                "sink could not look a message up", extra={"action": "sink", "error": str(exc)}
            )
            return _UNAVAILABLE
        if row is None:
            return _refuse(session, address, f"message {queue_id} does not exist")
        if not (row["sandbox"] or self._any_message):
            return _refuse(session, address, f"message {queue_id} is not a test-mode message")
        if row["status"] != "sending":
            return _refuse(session, address, f"message {queue_id} is not being delivered now")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self._messages[envelope] = row
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        row = self._messages.get(envelope)
        if row is None or address.lower() != row["recipient"].lower():
            about = f"message {row['id']}" if row is not None else "this mail"
            return _refuse(session, address, f"not the recipient of {about}")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        row = self._messages.get(envelope)
        if row is None:  # aiosmtpd asks for MAIL and RCPT first; this cannot be reached
            return "503 5.5.1 need MAIL FROM and RCPT TO first"
        try:
            await self._pool.execute(
                SQL["capture_sandbox_message"],
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                row["id"],
            )
        except DATABASE_ERRORS as exc:
            log.warning(
                "sink could not store a message", extra={"action": "sink", "error": str(exc)}
            )
            return _UNAVAILABLE
        return "250 2.0.0 captured"


def _refuse(session: Session, address: str, why: str) -> str:
    log.info(
        "sink refused mail",
        extra={
            "action": "sink_refuse",
            "peer": str(session.peer),
            "address": address[:320],
            "reason": why,
        },
    )
    return f"550 5.7.1 sandbox sink: {why}"


async def start_sink(
    pool: asyncpg.Pool, settings: Settings, *, listen: str | None = None
) -> asyncio.Server:
    """Serve on `listen` (default `[mta] sandbox_sink`; port 0 picks a free one)."""
    host, port = split_hostport(listen or settings.mta.sandbox_sink)
    loop = asyncio.get_running_loop()
    verp = Verp.from_settings(settings)
    # Under `up` (sandbox mode) the MTA routes live messages here too.
    handler: Any = CaptureHandler(pool, verp, any_message=settings.mta.sandbox)
    hostname = settings.mta.hostname
    return await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, data_size_limit=50 * 1024 * 1024),
        host=host,
        port=port,
    )
