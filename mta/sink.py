"""The capture sink: an SMTP server that keeps what it receives instead of delivering it.

`penguinmails up` routes every message here (sandbox mode), so a first run never sends
mail to the outside world. A message is answered 250 only once it is a committed row.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from penguinmails.config import split_hostport
from penguinmails.queries import load

SQL = load("mta")

log = logging.getLogger(__name__)


class CaptureHandler:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            await self._pool.execute(
                SQL["capture_message"], envelope.mail_from or "", list(envelope.rcpt_tos), data
            )
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning(
                "sink could not store a message", extra={"action": "sink", "error": str(exc)}
            )
            return "451 4.3.0 sandbox storage unavailable, try again"
        return "250 2.0.0 captured"


async def start_sink(pool: asyncpg.Pool, listen: str, hostname: str) -> asyncio.Server:
    host, port = split_hostport(listen)
    loop = asyncio.get_running_loop()
    handler: Any = CaptureHandler(pool)
    return await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, data_size_limit=50 * 1024 * 1024),
        host=host,
        port=port,
    )
