"""`penguinmails up` serves each role's metrics on its own metrics address, lists them in the
banner, and serves none on the public API and tracker listeners."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.helpers import free_listen


async def test_up_lists_and_serves_every_roles_metrics_address(database_url: str, tmp_path: Path):
    metrics = {role: free_listen() for role in ("api", "tracker", "mta", "inbound")}
    api, tracker = free_listen(), free_listen()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_DATABASE__URL": database_url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(tmp_path / "var"),
            "PENGUINMAILS_SECURITY__SECRET_KEYS": '["up-test-key"]',
            "PENGUINMAILS_API__LISTEN": api,
            "PENGUINMAILS_TRACKER__LISTEN": tracker,
            "PENGUINMAILS_MTA__SANDBOX_SINK": free_listen(),
            "PENGUINMAILS_INBOUND__LISTEN": free_listen(),
            **{f"PENGUINMAILS_{role.upper()}__METRICS_LISTEN": a for role, a in metrics.items()},
        }
    )
    with (tmp_path / "up.log").open("wb") as log:
        up = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "penguinmails.cli",
            "up",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert up.stdout is not None
    try:
        lines: list[str] = []
        while not lines or "stop:" not in lines[-1]:
            line = (await asyncio.wait_for(up.stdout.readline(), 60)).decode()
            assert line, (tmp_path / "up.log").read_text()
            lines.append(line.rstrip())
        banner = "\n".join(lines)
        listed = dict(
            (role, url) for url, role in re.findall(r"(http://\S+/metrics) \((\w+)\)", banner)
        )
        assert listed == {role: f"http://{a}/metrics" for role, a in metrics.items()}, banner

        names = {
            "api": "penguinmails_api_requests",
            "tracker": "penguinmails_tracker_hits",
            "mta": "penguinmails_mta_queue_depth",
            "inbound": "penguinmails_inbound_sessions",
        }
        async with aiohttp.ClientSession() as http:
            for role, url in listed.items():
                async with http.get(url) as response:
                    assert response.status == 200, role
                    assert names[role] in await response.text(), role
            for public in (api, tracker):
                async with http.get(f"http://{public}/metrics") as response:
                    assert response.status == 404, public
                async with http.get(f"http://{public}/healthz") as response:
                    assert await response.json() == {"status": "ok"}, public
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.wait(), 60) == 0, (tmp_path / "up.log").read_text()
