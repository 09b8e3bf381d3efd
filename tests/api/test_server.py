"""The API as a real process: started the way `penguinmails api` starts it, stopped by SIGTERM.

The processes run `api.server.serve` and `api.keys.create_key` through a small driver rather
than through `penguinmails.cli`, whose parser does not register the `api` and `keys`
subcommands yet (cli.py belongs to another change; its cmd_api/cmd_keys call exactly these).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.api.conftest import Client


def _env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PENGUINMAILS_DATABASE__URL": database_url,
        "PENGUINMAILS_PATHS__DATA_DIR": str(tmp_path / "var"),
        "PENGUINMAILS_SECURITY__SECRET_KEYS": '["test-key-one"]',
        "PENGUINMAILS_API__LISTEN": "127.0.0.1:0",
        "PENGUINMAILS_LOGGING__FORMAT": "json",
    }


DRIVER = """
import asyncio, sys
from penguinmails import logs
from penguinmails.config import load_settings
from penguinmails.database import connect

settings = load_settings()
logs.configure(settings.logging.level, settings.logging.format)


async def keys(tenant, test):
    from api.keys import create_key

    conn = await connect(settings.database.url)
    try:
        print(await create_key(conn, tenant=tenant, test=test))
    finally:
        await conn.close()


if sys.argv[1] == "api":
    from api.server import serve

    asyncio.run(serve(settings))
else:
    asyncio.run(keys(sys.argv[2], "--test" in sys.argv))
"""


async def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DRIVER,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_create_key_prints_the_key(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path)
    code, out, err = await _run(env, "keys", "cli-co", "--test")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk_test_") and len(key) == 52
    assert key not in err


async def test_api_serves_and_stops_on_sigterm(
    database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = _env(database_url, tmp_path)
    _, out, _ = await _run(env, "keys", "cli-co")
    key = out.strip().splitlines()[-1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DRIVER,
        "api",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        url = None
        while url is None:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "the api exited before it started"
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a library printing plain text; not ours to judge
                assert b"Traceback" not in line, line
                continue
            if entry.get("action") == "api_start":
                url = entry["listen"]
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
        reply = await Client(http, url + "/api/v1", key).get("/campaigns")
        assert reply.status == 200 and reply.headers["X-RateLimit-Limit"] == "1000"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        rest = (await process.stderr.read()).decode()
        assert key not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_metrics_count_requests_by_route_template(api, client, http) -> None:
    await client.get("/campaigns")
    await client.get("/campaigns/12345")  # 404, under its template, not its raw path

    async with http.get(api.url + "/metrics") as response:
        text = await response.text()

    assert response.status == 200
    assert (
        'penguinmails_api_requests_total{method="GET",route="/api/v1/campaigns",status="200"} 1.0'
        in text
    )
    assert (
        'penguinmails_api_requests_total{method="GET",route="/api/v1/campaigns/{id}",status="404"}'
        " 1.0" in text
    )
    assert "12345" not in text
