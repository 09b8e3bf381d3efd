"""Real `penguinmails` processes for the reliability suite.

CI runs the bounded sizes; `PENGUINMAILS_RELIABILITY=full` runs the full ones locally
(20,000 messages through repeated kill -9, and so on): tests/helpers.py's `size`.

The SMTP peer here advertises PIPELINING, as nearly every receiver does: the kill -9 and
crash-after-250 proofs run on the path the MTA takes in production, where a message's end
of data and the next message's MAIL, RCPT and DATA share the wire.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.smtp_peer import SMTPPeer


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SMTPPeer]:
    peer = await SMTPPeer(pipelining=True).start()
    yield peer
    await peer.stop()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `penguinmails <role>` processes; whatever is left running is killed at the end."""
    started: list[asyncio.subprocess.Process] = []

    async def start(role: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        with (tmp_path / f"{role}-{len(started)}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "penguinmails.cli", role, env=env, stdout=log, stderr=log
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()
