"""The README's commands work as written: the set-up commands, then every command after
them against a running `penguinmails up`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mta.shaping import load_rules
from penguinmails.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "penguinmails.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_two_setup_commands_are_the_first_two_and_ci_runs_the_second():
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    run, test = blocks[0].strip(), blocks[1].strip()
    assert run.endswith("penguinmails up")
    assert test.endswith("python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text()


SHAPING_RULES = ROOT / "configs" / "shaping.toml"  # read through [mta] shaping_file


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "configs").glob("*.toml") if p != SHAPING_RULES),
    ids=lambda p: p.name,
)
def test_every_shipped_config_is_valid(path):
    settings = load_settings(path, environ={})
    assert settings.mta.rule_for("gmail.com").max_connections >= 1
    if settings.mta.shaping_file:
        assert (ROOT / settings.mta.shaping_file).resolve() == SHAPING_RULES
        assert "google" in load_rules(str(SHAPING_RULES)).providers


# -- the README, run as written ----------------------------------------------------------
# Every ```sh block after the two set-up commands runs, in order, in one bash (so variables
# carry from block to block, as in the reader's terminal), against a real `penguinmails up`.
# Only the addresses change: the test's free ports stand in for the defaults the README shows.
# What a browser does in between (the sandbox page, the pixel, the click) is done over HTTP
# where the README says to do it.

WALKTHROUGH = "## A first message"
BROWSER_STEP = "### 5. Open it and click"
WEBHOOK_STEP = "### 6. Receive the events as webhooks"
DASHBOARD_STEP = "### 7. The dashboard"
README_RECEIVER = "127.0.0.1:9000"
README_API = "http://127.0.0.1:8080"
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _up_env() -> tuple[dict[str, str], str, str]:
    """The environment for `up` and the README's commands: every listener on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    api, tracker = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    env.update(
        {
            "PENGUINMAILS_API__LISTEN": api,
            "PENGUINMAILS_TRACKER__LISTEN": tracker,
            "PENGUINMAILS_TRACKER__BASE_URL": f"http://{tracker}",
            "PENGUINMAILS_MTA__SANDBOX_SINK": f"127.0.0.1:{_free_port()}",
            "PENGUINMAILS_INBOUND__LISTEN": f"127.0.0.1:{_free_port()}",
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",
            "PENGUINMAILS_INBOUND__METRICS_LISTEN": "",
            "PENGUINMAILS_LOGGING__FORMAT": "text",
        }
    )
    return env, f"http://{api}", f"http://{tracker}"


class Shell:
    """One bash the README's blocks run in, one after another; `set -e -o pipefail`, so a
    failing command ends it and the test shows the output up to there."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.count = 0

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str]) -> Shell:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            "-e",
            "-o",
            "pipefail",
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so close() ends its background jobs
        )
        return cls(proc)

    async def run(self, block: str, timeout: float = 120) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        marker = f"__readme_block_{self.count}_done__"
        # A group, not a subshell (assignments persist); stdin from /dev/null so no command
        # reads the rest of the script.
        self.proc.stdin.write(f"{{\n{block}\n}} </dev/null\nprintf '\\n%s\\n' {marker}\n".encode())
        await self.proc.stdin.drain()
        output: list[str] = []

        async def read() -> str:
            assert self.proc.stdout is not None
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(
                        f"a README command failed:\n{block}\n---\n{''.join(output)}"
                    )
                if line.strip() == marker:
                    return "".join(output)
                output.append(line)

        text = await asyncio.wait_for(read(), timeout)
        for line in text.splitlines():  # every API answer the reader sees is a success
            if line.startswith('{"success"'):
                assert json.loads(line)["success"] is True, line
        return text

    async def close(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        # Whatever a failed step left running in the background (the webhook receiver) would
        # hold the output pipe open for ever.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.stdout is not None
        await self.proc.stdout.read()  # to EOF, so the pipe's transport closes


async def _cli_status(cwd: Path, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "status", cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


async def _eventually(check: Any, timeout: float = 30, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


async def test_the_readme_walkthrough_works_as_written(tmp_path: Path) -> None:
    import aiohttp

    text = README[README.index(WALKTHROUGH) :]
    before, after = text.split(BROWSER_STEP, 1)
    after, hooks_text = after.split(WEBHOOK_STEP, 1)
    hooks_text, dashboard_text = hooks_text.split(DASHBOARD_STEP, 1)
    dashboard_text = dashboard_text.split("\n## ", 1)[0]
    [make_user] = _sh_blocks(dashboard_text)
    screenshot = re.search(r"!\[[^\]]+\]\((docs/[\w.-]+\.png)\)", dashboard_text)
    assert screenshot and (ROOT / screenshot.group(1)).stat().st_size < 200_000
    first, walkthrough, last = _sh_blocks(before)[0], _sh_blocks(before)[1:], _sh_blocks(after)
    hooks = _sh_blocks(hooks_text)
    assert len(hooks) == 2
    assert first.lstrip().startswith(".venv/bin/penguinmails send")
    assert walkthrough and last
    env, api_url, tracker_url = _up_env()
    assert README_API in "".join(walkthrough)

    # `.venv/bin/penguinmails` as the README writes it, relative to where `up` runs.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    console = tmp_path / ".venv" / "bin" / "penguinmails"
    console.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m penguinmails.cli "$@"\n')
    console.chmod(0o755)

    log = tmp_path / "up.log"
    with log.open("w") as errors:
        up = await asyncio.create_subprocess_exec(
            *CLI, "up", cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=errors
        )
    shell = await Shell.start(tmp_path, env)
    try:
        assert up.stdout is not None
        banner = (await asyncio.wait_for(up.stdout.readline(), 120)).decode()
        assert "PenguinMails is up" in banner, log.read_text()

        # A first message, from the CLI: queued, then sent to the capture sink.
        sent = await shell.run(first)
        assert re.search(r"^\d+$", sent, re.M), sent
        assert await _eventually(lambda: _status_says_sent(tmp_path, env)), await _cli_status(
            tmp_path, env
        )

        # The campaign, with curl, up to the sandbox inbox.
        for block in walkthrough:
            await shell.run(block.replace(README_API, api_url))

        key = (tmp_path / "var" / "sandbox-api-key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers={"User-Agent": CHROME}) as http:

            async def inbox() -> list[dict[str, Any]]:
                async with http.get(f"{api_url}/api/v1/sandbox/messages", headers=auth) as r:
                    items = (await r.json())["data"]["items"]
                return items if len(items) >= 3 else []

            # The CLI's first message too: `send` queues as `up`'s sandbox tenant.
            items = await _eventually(inbox)
            assert {m["subject"] for m in items} == {"Hello", "Hello Ann", "Hello Bob"}, items

            # The browser: the page, then Ann's message with its html: a tracked link, and no
            # pixel (too short to carry one without looking image-only to filters).
            async with http.get(f"{api_url}/sandbox") as r:
                assert r.status == 200 and "Content-Security-Policy" in r.headers
            ann = next(m for m in items if m["subject"] == "Hello Ann")
            async with http.get(
                f"{api_url}/api/v1/sandbox/messages/{ann['id']}", headers=auth
            ) as r:
                message = (await r.json())["data"]
            assert message["dkim"]["result"] == "pass", message["dkim"]
            assert message["dkim"]["domain"] == "example.net"
            html = message["html"]
            assert f"{tracker_url}/o/" not in html and "<img" not in html, html
            link = re.search(rf'href="({re.escape(tracker_url)}/c/[^"]+)"', html)
            assert link, html
            async with http.get(link.group(1).replace("&amp;", "&"), allow_redirects=False) as r:
                assert r.status in (302, 303)
                # The page, with the click's conversion token.
                assert r.headers["Location"].startswith("https://example.net/pricing?pm_cv=")

        # The README's check, until the tracker has written both events.
        async def engaged() -> bool:
            for block in last:
                out = await shell.run(block.replace(README_API, api_url))
            overview = json.loads(out.strip().splitlines()[-1])["data"]["overview"]
            return bool(overview["clicked"] >= 1)

        assert await _eventually(engaged), "the click never showed in the analytics"

        # A webhook received on this machine: allowed under `up`, signed, logged by the
        # README's own receiver (on a free port here).
        port = _free_port()
        receiver = hooks[0].replace(README_RECEIVER, f"127.0.0.1:{port}")
        receiver = receiver.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {port})')
        assert "9000" not in receiver
        answer = await shell.run(receiver)
        ping = json.loads(answer.strip().splitlines()[-1])["data"]
        assert ping["delivered"] is True and ping["status_code"] == 204, ping
        logged = await shell.run(hooks[1])
        assert ping["webhook_id"] in logged and '"type"' in logged, logged

        # The dashboard: the README's user logs in and sees the test-mode banner.
        made = await shell.run(make_user.replace(README_API, api_url))
        user = json.loads(made.strip().splitlines()[-1])["data"]
        password = re.search(r'"password": "([^"]+)"', make_user)
        assert password and user["email"] == "me@example.net", made
        async with aiohttp.ClientSession() as browser:
            async with browser.get(f"{api_url}/dashboard/login") as r:
                page = await r.text()
                csrf_cookie = r.cookies["__Host-pm_csrf"].value
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
            assert token, page
            cookies = {"Cookie": f"__Host-pm_csrf={csrf_cookie}"}
            form = {"email": user["email"], "password": password.group(1)}
            async with browser.post(
                f"{api_url}/dashboard/login",
                data={**form, "csrf_token": token.group(1)},
                headers=cookies,
                allow_redirects=False,
            ) as r:
                assert r.status == 303, await r.text()
                session = r.cookies["__Host-pm_session"].value
            cookies["Cookie"] += f"; __Host-pm_session={session}"
            async with browser.get(f"{api_url}/dashboard/campaigns", headers=cookies) as r:
                page = await r.text()
                assert r.status == 200 and 'id="test-mode"' in page
                assert "Hello {{first_name}}" in page or "Hello" in page
    finally:
        await shell.close()
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(up.wait(), 60)
        if up.stdout is not None:
            await up.stdout.read()
    assert code == 0, log.read_text()


async def _status_says_sent(cwd: Path, env: dict[str, str]) -> bool:
    return bool(re.search(r"^sent\s+1$", await _cli_status(cwd, env), re.M))


def test_send_refuses_header_injection_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    result = subprocess.run(
        [
            *CLI,
            "send",
            "--from",
            "news@example.com",
            "--to",
            "someone@example.org",
            "--subject",
            "Hi\r\nBcc: victim@example.net",
            "--text",
            "x",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "subject" in result.stderr and "CR or LF" in result.stderr
