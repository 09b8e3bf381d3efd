"""After a full run (key, webhook with a secret, sends, deliveries, a login), no API key,
webhook secret or password appears anywhere in the logs, even at DEBUG."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
from aiohttp import web

from tests.helpers import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_secret_reaches_the_logs(tmp_path):
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    hook_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    api_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_API__LISTEN": f"127.0.0.1:{api_port}",
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__LISTEN": f"127.0.0.1:{_free_port()}",
            "PENGUINMAILS_MTA__SANDBOX_SINK": f"127.0.0.1:{_free_port()}",
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",
            "PENGUINMAILS_INBOUND__LISTEN": f"127.0.0.1:{_free_port()}",
            "PENGUINMAILS_INBOUND__METRICS_LISTEN": "",
            "PENGUINMAILS_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
            "PENGUINMAILS_LOGGING__LEVEL": "DEBUG",
        }
    )
    log_path = tmp_path / "up.log"
    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXh5eg=="
    password = "correct horse battery staple 42"
    with log_path.open("wb") as log:
        up = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "penguinmails.cli",
            "up",
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        key_file = tmp_path / "var" / "sandbox-api-key"
        await wait_for(key_file.exists, timeout=60)
        await wait_for(lambda: b"PenguinMails is up" in log_path.read_bytes(), timeout=60)
        key = key_file.read_text().strip()
        base = f"http://127.0.0.1:{api_port}/api/v1"
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/webhooks",
                headers=auth,
                json={
                    "url": f"http://127.0.0.1:{hook_port}/hook",
                    "secret": secret,
                },
            ) as response:
                assert response.status == 201, await response.text()
            async with http.post(
                f"{base}/emails/send",
                headers=auth,
                json={
                    "from": {"email": "news@example.com"},
                    "to": "someone@example.org",
                    "subject": "Hello",
                    "content": {"text": "Hi"},
                },
            ) as response:
                assert response.status == 202, await response.text()
            async with http.post(
                f"{base}/users",
                headers=auth,
                json={
                    "email": "ops@example.com",
                    "password": password,
                },
            ) as response:
                assert response.status in (200, 201), await response.text()
            async with http.post(
                f"{base}/auth/login",
                json={
                    "email": "ops@example.com",
                    "password": password,
                },
            ) as response:
                assert response.status == 200, await response.text()
                token = (await response.json())["data"]["access_token"]
            async with http.get(f"{base}/campaigns", headers=auth | {"X-Debug": key}) as r:
                assert r.status == 200
        await wait_for(lambda: received, timeout=30)  # a signed webhook went out
    finally:
        up.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.wait(), 60) == 0
        await runner.cleanup()

    logs = log_path.read_text()
    assert "PenguinMails is up" in logs
    for leaked in (key, key.split("_")[-1], secret, secret.removeprefix("whsec_"), password, token):
        assert leaked not in logs.replace(f"test API key:  {key}", ""), leaked[:12]
