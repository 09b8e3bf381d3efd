"""`penguinmails tracker` as operators run it: starts, serves, and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from penguinmails.links import Links
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner


async def test_sigterm_shuts_the_tracker_down_cleanly(
    database_url, settings, sent_messages, pool, http, tmp_path
):
    (message,) = await sent_messages()
    env = {
        **os.environ,
        "PENGUINMAILS_DATABASE__URL": database_url,
        "PENGUINMAILS_PATHS__DATA_DIR": str(tmp_path),
        "PENGUINMAILS_TRACKER__LISTEN": "127.0.0.1:0",
        "PENGUINMAILS_TRACKER__METRICS_LISTEN": "127.0.0.1:0",
        "PENGUINMAILS_SECURITY__SECRET_KEYS": '["test-key-one"]',
        "PENGUINMAILS_LOGGING__FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        "tracker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    logs: list[dict] = []
    try:

        async def started() -> tuple[str, str]:
            while True:
                line = await process.stderr.readline()
                assert line, "the tracker exited before it started"
                entry = json.loads(line)
                logs.append(entry)
                if entry.get("action") == "tracker_start":
                    return str(entry["listen"]), str(entry["metrics"])

        url, metrics = await asyncio.wait_for(started(), 30)
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
        async with http.get(url + "/metrics") as response:
            assert response.status == 404
        links = Links(LinkSigner(server_keys(settings)), url)
        async with http.get(links.open_url(message)) as response:
            assert response.status == 200
        assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.opened'") == 1
        async with http.get(metrics + "/metrics") as response:
            assert response.status == 200
            assert 'penguinmails_tracker_hits_total{kind="open",result="ok"} 1.0' in (
                await response.text()
            )

        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        assert await asyncio.wait_for(process.wait(), 5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [line for line in rest.decode().splitlines() if line.strip()]
    # Anything not a JSON log line (a stray warning from a library) must at least not be a crash.
    assert not any("Traceback" in line for line in lines), rest
    actions = [json.loads(line).get("action") for line in lines if line.startswith("{")]
    assert "signal" in actions and "dispatcher_stopped" in actions
    assert actions[-1] == "tracker_stop"
