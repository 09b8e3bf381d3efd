"""Fixtures for inbound: a real server in the test's loop on port 0, sent messages to match.

`corpus/` holds real-world shaped mail with placeholders filled in per test:
{{RETURN_PATH}} (the signed VERP return path of the message), {{UNSUBSCRIBE}} (its mailto:
unsubscribe address), {{MESSAGE_ID}} (its Message-ID, no brackets), {{RECIPIENT}},
{{FBL_ADDRESS}} and {{REPLY_ADDRESS}} (other addresses on the bounce domain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from inbound.server import InboundServer
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.verp import Verp

CORPUS = Path(__file__).parent / "corpus"
BOUNCE_DOMAIN = "bounces.localhost"
FBL_ADDRESS = f"fbl@{BOUNCE_DOMAIN}"
REPLY_ADDRESS = f"replies@{BOUNCE_DOMAIN}"


@dataclass
class SentMessage:
    queue_id: int
    message_id: str
    recipient: str
    return_path: str
    unsubscribe: str

    def fill(self, template: str) -> bytes:
        values = {
            "RETURN_PATH": self.return_path,
            "UNSUBSCRIBE": self.unsubscribe,
            "MESSAGE_ID": self.message_id,
            "RECIPIENT": self.recipient,
            "FBL_ADDRESS": FBL_ADDRESS,
            "REPLY_ADDRESS": REPLY_ADDRESS,
        }
        for name, value in values.items():
            template = template.replace("{{" + name + "}}", value)
        assert "{{" not in template, template
        return template.encode("utf-8")

    def envelope(self, token: str) -> str:
        return {
            "RETURN_PATH": self.return_path,
            "UNSUBSCRIBE": self.unsubscribe,
            "FBL_ADDRESS": FBL_ADDRESS,
            "REPLY_ADDRESS": REPLY_ADDRESS,
            "RECIPIENT": self.recipient,
        }.get(token, token)


def corpus(name: str) -> str:
    return (CORPUS / name).read_text("utf-8")


async def sent_message(
    pool: asyncpg.Pool, settings: Settings, recipient: str = "someone@dest.test"
) -> SentMessage:
    """A message as the MTA leaves it after a 250: status 'sent'. Its one event is the
    enqueue's `email.sent`; the tests read what inbound records apart from it."""
    tenant = await ensure_tenant(pool, "acme")
    [queue_id] = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test", subject="Hello", text="Hi there", recipients=[recipient]
        ),
    )
    message_id = await pool.fetchval(
        "UPDATE messages SET status = 'sent', sent_at = now(), attempts = 1 WHERE id = $1 "
        "RETURNING message_id",
        queue_id,
    )
    verp = Verp.from_settings(settings)
    return SentMessage(
        queue_id, message_id, recipient, verp.encode(queue_id), verp.unsubscribe_address(queue_id)
    )


async def send(port: int, data: bytes, sender: str, recipients: list[str], **kwargs: Any) -> Any:
    """One SMTP transaction; `sender` '' is the null sender (MAIL FROM:<>) of a bounce."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, **kwargs)
    async with client:
        return await client.sendmail(sender, recipients, data)


async def snapshot(pool: asyncpg.Pool) -> dict[str, Any]:
    """Everything inbound may change, to prove that something did not."""
    return {
        "events": await pool.fetchval("SELECT count(*) FROM events"),
        "suppressions": await pool.fetchval("SELECT count(*) FROM suppressions"),
        "inbound": await pool.fetchval("SELECT count(*) FROM inbound_messages"),
        "statuses": [
            tuple(r) for r in await pool.fetch("SELECT id, status FROM messages ORDER BY id")
        ],
        "firsts": await pool.fetchval("SELECT count(*) FROM engagement_firsts"),
    }


@pytest.fixture
def inbound_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def build(**inbound: Any) -> Settings:
        values = {"listen": "127.0.0.1:0", "metrics_listen": ""}
        values.update(inbound)
        return make_settings(inbound=values)

    return build


@pytest.fixture
async def start_inbound(pool: asyncpg.Pool) -> AsyncIterator[Callable[..., Any]]:
    servers: list[InboundServer] = []

    async def start(settings: Settings) -> InboundServer:
        server = await InboundServer(pool, settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=1.0)
