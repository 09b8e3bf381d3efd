"""The API as a real process: `penguinmails keys create` makes the key, `penguinmails api`
serves with it and stops on SIGTERM; and the API's health and metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from api.server import ApiServer
from penguinmails.database import create_pool
from penguinmails.observability import HEALTH_TIMEOUT, start_ops_server
from tests.helpers import Client, role_env


def _env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return role_env(
        database_url,
        tmp_path / "var",
        PENGUINMAILS_API__LISTEN="127.0.0.1:0",
        PENGUINMAILS_API__METRICS_LISTEN="127.0.0.1:0",
        PENGUINMAILS_LOGGING__FORMAT="json",
    )


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_keys_create_prints_the_key_alone_on_its_last_line(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url, tmp_path)
    code, out, err = await _cli(env, "keys", "create", "--tenant", "cli-co", "--test")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk_test_") and len(key) == 52
    assert key not in err


async def test_api_serves_and_stops_on_sigterm(
    database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = _env(database_url, tmp_path)
    code, out, err = await _cli(env, "keys", "create", "--tenant", "cli-co")
    assert code == 0, err
    key = out.strip().splitlines()[-1]  # a live key, used as printed
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        "api",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        url = metrics = None
        while url is None:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "the api exited before it started"
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a library printing plain text; not ours to judge
                assert b"Traceback" not in line, line
                continue
            if entry.get("action") == "api_start":
                url, metrics = entry["listen"], entry["metrics"]
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        reply = await Client(http, url + "/api/v1", key).get("/campaigns")
        assert reply.status == 200 and reply.headers["X-RateLimit-Limit"] == "1000"
        # Metrics on their own (loopback) address, not on the public listener.
        assert metrics != url
        async with http.get(url + "/metrics") as response:
            assert response.status == 404
        async with http.get(metrics + "/metrics") as response:
            assert response.status == 200
            assert 'route="/api/v1/campaigns",status="200"} 1.0' in await response.text()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        rest = (await process.stderr.read()).decode()
        assert key not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _serve_ops(api: ApiServer) -> tuple[str, web.AppRunner]:
    runner = await start_ops_server(api.ops_app(), "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}", runner


async def test_metrics_count_requests_by_route_template(api, client, http) -> None:
    await client.get("/campaigns")
    await client.get("/campaigns/12345")  # 404, under its template, not its raw path

    url, runner = await _serve_ops(api)
    try:
        async with http.get(url + "/metrics") as response:
            text = await response.text()
    finally:
        await runner.cleanup()

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


async def test_the_public_listener_serves_no_metrics(api, http) -> None:
    async with http.get(api.url + "/metrics") as response:
        assert response.status == 404
    url, runner = await _serve_ops(api)
    try:
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
    finally:
        await runner.cleanup()


async def test_health_says_up_or_down_and_only_the_log_says_why(
    database_url, settings, http, caplog
) -> None:
    dead = await create_pool(database_url, min_size=1, max_size=1)
    await dead.close()
    with caplog.at_level(logging.WARNING, logger="penguinmails.observability"):
        async with ApiServer(dead, settings) as api:
            async with http.get(api.url + "/healthz") as response:
                assert response.status == 503
                assert await response.json() == {"status": "unavailable"}
            async with http.get(api.url + "/api/v1/health") as response:
                assert response.status == 503
                body = await response.text()
    assert "Error" not in body and "closed" not in body, body
    reasons = [r for r in caplog.records if r.name == "penguinmails.observability"]
    assert reasons and all("closed" in r.error for r in reasons)


async def test_health_gives_up_within_the_one_timeout_when_no_connection_is_free(
    database_url, settings, http
) -> None:
    busy = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with ApiServer(busy, settings) as api, busy.acquire():
            for path in ("/healthz", "/api/v1/health"):
                # An answer at all says the check gave up on its own: one that waited for a
                # connection would still be waiting when the client's patience runs out.
                async with http.get(
                    api.url + path, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT + 5)
                ) as response:
                    assert response.status == 503, path
    finally:
        await busy.close()
