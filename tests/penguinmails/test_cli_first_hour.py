"""The CLI as a new user meets it: help that explains, mistakes that are named, no surprises
(no tenant made by a typo, no fresh database made in the wrong folder)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg

from penguinmails.cli import build_parser

CLI = [sys.executable, "-m", "penguinmails.cli"]


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_command_and_option_has_a_one_line_help() -> None:
    top = build_parser()
    assert "penguinmails up" in (top.description or "")
    for parser in _parsers(top):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}: no help"
            else:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_outside_the_project_folder_nothing_is_created(tmp_path: Path) -> None:
    for args in (("status",), ("mta",), ("keys", "create", "--tenant", "acme")):
        result = _run(tmp_path, *args)
        assert result.returncode == 1, result.stderr
        assert "no database at" in result.stderr and "paths.data_dir" in result.stderr
        assert str((tmp_path / "var" / "postgres").resolve()) in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()


async def test_send_names_an_unknown_tenant_and_creates_none(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    message = ("send", "--from", "a@acme.test", "--to", "b@dest.test", "--subject", "S")
    env = {"PENGUINMAILS_DATABASE__URL": database_url}
    result = _run(tmp_path, *message, "--text", "t", "--tenant", "nosuch", "--live", **env)
    assert result.returncode == 1
    assert "no tenant named 'nosuch'" in result.stderr and "keys create" in result.stderr
    missing = _run(tmp_path, *message, "--text", "t", **env)  # `up` has not run here
    assert missing.returncode == 1 and "`penguinmails up` makes it" in missing.stderr
    assert await pool.fetchval("SELECT count(*) FROM tenants") == 0
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


def test_a_busy_port_is_one_line_naming_its_setting(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(
            tmp_path,
            "api",
            PENGUINMAILS_DATABASE__URL=database_url,
            PENGUINMAILS_API__LISTEN=f"127.0.0.1:{port}",
            PENGUINMAILS_API__METRICS_LISTEN="",
        )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"penguinmails: cannot listen on 127.0.0.1:{port} (api.listen)")
    assert "PENGUINMAILS_API__LISTEN" in line and "Traceback" not in result.stderr
