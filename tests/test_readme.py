"""The README's commands work as written: `up`, then `send` and `status` against it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    settings = load_settings(path, environ={})
    assert settings.mta.rule_for("gmail.com").max_connections >= 1


def test_up_then_send_then_status(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env["PENGUINMAILS_MTA__SANDBOX_SINK"] = f"127.0.0.1:{_free_port()}"
    env["PENGUINMAILS_LOGGING__FORMAT"] = "text"
    log = tmp_path / "up.log"
    with (
        log.open("w") as errors,
        subprocess.Popen(
            [*CLI, "up"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        ) as up,
    ):
        try:
            assert up.stdout is not None
            banner = up.stdout.readline()  # printed once everything is serving
            assert "PenguinMails is up" in banner, log.read_text()

            # The README's first-message commands, against the running system.
            sent = subprocess.run(
                [
                    *CLI,
                    "send",
                    "--from",
                    "news@example.com",
                    "--to",
                    "someone@example.org",
                    "--subject",
                    "Hello",
                    "--text",
                    "Hello from PenguinMails",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            assert sent.stdout.strip().isdigit()

            deadline = time.monotonic() + 30
            while True:
                status = subprocess.run(
                    [*CLI, "status"],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if re.search(r"^sent\s+1$", status.stdout, re.M) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert re.search(r"^sent\s+1$", status.stdout, re.M), status.stdout + status.stderr
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(timeout=30)
    assert code == 0, log.read_text()


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
