"""The capture sink: an SMTP server that keeps what it receives instead of delivering it.

`penguinmails up` routes every message here (sandbox mode), and so does the MTA for messages
sent with a test-mode key, so a first run never sends mail to the outside world. A message
is answered 250 only once it is a committed row. Each row names the queue message it
delivers and that message's tenant, found from the signed VERP return path (the envelope
sender our MTA writes), so the API's sandbox inbox shows a tenant only its own captures.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from penguinmails.config import Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load
from penguinmails.verp import Verp

SQL = load("mta")

log = logging.getLogger(__name__)


class CaptureHandler:
    def __init__(self, pool: asyncpg.Pool, verp: Verp) -> None:
        self._pool = pool
        self._verp = verp

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        # None for mail that is not ours (no signed return path): kept, but in no tenant's inbox.
        queue_id = self._verp.decode(mail_from) if mail_from else None
        try:
            await self._pool.execute(
                SQL["capture_sandbox_message"],
                mail_from,
                list(envelope.rcpt_tos),
                data,
                queue_id,
            )
        except DATABASE_ERRORS as exc:
            log.warning(
                "sink could not store a message", extra={"action": "sink", "error": str(exc)}
            )
            return "451 4.3.0 sandbox storage unavailable, try again"
        return "250 2.0.0 captured"


async def start_sink(
    pool: asyncpg.Pool, settings: Settings, *, listen: str | None = None
) -> asyncio.Server:
    """Serve on `listen` (default `[mta] sandbox_sink`; port 0 picks a free one)."""
    host, port = split_hostport(listen or settings.mta.sandbox_sink)
    loop = asyncio.get_running_loop()
    handler: Any = CaptureHandler(pool, Verp.from_settings(settings))
    hostname = settings.mta.hostname
    return await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, data_size_limit=50 * 1024 * 1024),
        host=host,
        port=port,
    )
