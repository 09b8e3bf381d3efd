"""Real `penguinmails` processes for the reliability suite, and its size knob.

CI runs the bounded sizes; `PENGUINMAILS_RELIABILITY=full` runs the full ones locally
(20,000 messages through repeated kill -9, and so on).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

# The API's fixtures (servers on loopback, keys, a client) serve the hostile-input tests too.
from tests.api.conftest import (  # noqa: F401
    api,
    client,
    http,
    key,
    make_key,
    settings,
    start_api,
)

FULL = os.environ.get("PENGUINMAILS_RELIABILITY") == "full"


def size(bounded: int, full: int) -> int:
    return full if FULL else bounded


def role_env(database_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_DATABASE__URL": database_url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(data_dir),
            "PENGUINMAILS_SECURITY__SECRET_KEYS": '["reliability-key"]',
            "PENGUINMAILS_MTA__POLL_INTERVAL": "0.2",
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
            **overrides,
        }
    )
    return env


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
