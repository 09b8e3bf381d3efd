"""Per-client limits, as Postfix's anvil keeps them: one address may hold only so many
sessions at once and open only so many per window; past either it gets 421 and a closed
socket, and other addresses are served all the while. Real sockets over loopback: 127.0.0.1
is one client, 127.0.0.2 another (Linux answers for all of 127/8)."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from pathlib import Path

import aiosmtplib

from inbound.server import InboundServer
from penguinmails.config import InboundSettings
from tests.helpers import wait_for
from tests.inbound.conftest import FBL_ADDRESS, send

CONFIGS = Path(__file__).parents[2] / "configs"
LIMIT_KEYS = ("max_sessions_per_client", "client_connection_rate", "client_rate_window")


class _Client:
    """A raw SMTP connection from `source` that has read its greeting."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.greeting = b""

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> _Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        client = cls(reader, writer)
        client.greeting = await asyncio.wait_for(reader.readline(), 5)
        return client

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def quit(self) -> None:
        """QUIT an admitted session and wait for the server to close it."""
        self.writer.write(b"QUIT\r\n")
        await self.writer.drain()
        await asyncio.wait_for(self.reader.read(), 5)
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_a_client_past_its_session_cap_gets_421_until_one_of_its_sessions_closes(
    pool, inbound_settings, start_inbound
):
    server = await start_inbound(inbound_settings(max_sessions=10, max_sessions_per_client=2))
    first = await _Client.connect(server.port)
    second = await _Client.connect(server.port)
    held = [first, second]
    try:
        assert first.greeting.startswith(b"220") and second.greeting.startswith(b"220")

        third = await _Client.connect(server.port)
        assert third.greeting.startswith(b"421 4.7.0"), third.greeting
        assert await third.closed_by_server()
        await third.close()
        assert server.sessions == 2

        # Another client is served while this one is at its cap.
        other = await _Client.connect(server.port, source="127.0.0.2")
        assert other.greeting.startswith(b"220"), other.greeting
        await other.quit()

        await first.quit()
        held.remove(first)
        await wait_for(lambda: server.sessions == 1, 5)
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.port, timeout=10, source_address=("127.0.0.1", 0)
        )
        async with client:
            errors, _ = await client.sendmail("", [FBL_ADDRESS], b"Subject: x\r\n\r\nx\r\n")
        assert errors == {}
    finally:
        for client in held:
            await client.quit()
    assert server.metrics.refused.labels("client_sessions")._value.get() == 1


async def test_a_client_past_its_connection_rate_gets_421_until_the_window_passes(
    pool, inbound_settings
):
    now = [1000.0]
    settings = inbound_settings(client_connection_rate=3, client_rate_window=60)
    server = await InboundServer(pool, settings, clock=lambda: now[0]).start()
    try:
        for _ in range(3):
            client = await _Client.connect(server.port)
            assert client.greeting.startswith(b"220"), client.greeting
            await client.quit()

        refused = await _Client.connect(server.port)
        assert refused.greeting.startswith(b"421 4.7.0"), refused.greeting
        assert await refused.closed_by_server()
        await refused.close()
        other = await _Client.connect(server.port, source="127.0.0.2")
        assert other.greeting.startswith(b"220"), other.greeting
        await other.quit()

        now[0] += 59.0  # still inside the window: refused attempts count too
        refused = await _Client.connect(server.port)
        assert refused.greeting.startswith(b"421 4.7.0"), refused.greeting
        await refused.close()

        now[0] += 60.0
        errors, _ = await send(server.port, b"Subject: x\r\n\r\nx\r\n", "", [FBL_ADDRESS])
        assert errors == {}
    finally:
        await server.stop(grace=1.0)
    assert server.metrics.refused.labels("client_rate")._value.get() == 2


async def test_zero_turns_each_per_client_limit_off(pool, inbound_settings, start_inbound):
    server = await start_inbound(
        inbound_settings(max_sessions_per_client=0, client_connection_rate=0)
    )
    clients = [await _Client.connect(server.port) for _ in range(12)]
    try:
        assert all(c.greeting.startswith(b"220") for c in clients)
    finally:
        for client in clients:
            await client.quit()


def test_the_limits_are_on_by_default_and_documented_with_their_defaults():
    defaults = InboundSettings()
    assert defaults.max_sessions_per_client > 0 and defaults.client_connection_rate > 0
    assert defaults.max_sessions_per_client < defaults.max_sessions
    documented = tomllib.loads((CONFIGS / "penguinmails.toml").read_text())["inbound"]
    for key in LIMIT_KEYS:
        assert documented[key] == getattr(defaults, key), key
