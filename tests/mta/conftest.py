"""Fixtures for the MTA's tests.

`scripted` serves SMTP from a coroutine the test writes byte by byte, for what no real server
sends (a bare-LF reply, a hang-up at an exact point of a pipelined group).

dkimpy needs PyNaCl for Ed25519, which is not a dependency; `ed25519_for_dkimpy` puts in a
small stand-in backed by `cryptography` that does only the raw Ed25519 check, so every other
step of a verification is still dkimpy's own.
"""

from __future__ import annotations

import asyncio
import base64
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import dkim as dkimpy
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _nacl_stand_in() -> types.SimpleNamespace:
    class BadSignatureError(Exception):
        pass

    class VerifyKey:
        def __init__(self, key: bytes, encoder: object = None) -> None:
            try:
                self._key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
            except ValueError as exc:
                raise ValueError(str(exc)) from exc

        def verify(self, message: bytes, signature: bytes) -> bytes:
            try:
                self._key.verify(signature, message)
            except InvalidSignature as exc:
                raise BadSignatureError from exc
            return message

    return types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=object),
        exceptions=types.SimpleNamespace(
            BadSignatureError=BadSignatureError, ValueError=ValueError
        ),
    )


@pytest.fixture(scope="module")
def ed25519_for_dkimpy() -> Iterator[None]:
    had = hasattr(dkimpy, "nacl")
    original = getattr(dkimpy, "nacl", None)
    dkimpy.nacl = _nacl_stand_in()  # type: ignore[attr-defined]
    yield
    if had:
        dkimpy.nacl = original  # type: ignore[attr-defined]
    else:
        del dkimpy.nacl  # type: ignore[attr-defined]


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    """`port = await scripted(script)`: each connection runs `script(reader, writer)`."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
