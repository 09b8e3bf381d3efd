"""The systemd units pass `systemd-analyze verify` and carry the hardening and ordering a
role needs, and each role tells systemd it is ready (sd_notify) once it is serving."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.server import REQUEST_GRACE
from penguinmails.config import load_settings
from penguinmails.lifecycle import FORCE_EXIT_SECONDS
from penguinmails.systemd import notify
from tests.helpers import ROOT, debian_tool, free_listen
from tracker.server import SHUTDOWN_GRACE

UNITS = sorted(
    p for p in (ROOT / "systemd").glob("*.service") if p.name != "penguinmails-maintain.service"
)
MAINTAIN = ROOT / "systemd" / "penguinmails-maintain.service"
TIMER = ROOT / "systemd" / "penguinmails-maintain.timer"
INSTALLED = "/opt/penguinmails/.venv/bin/penguinmails"
ROLES = {"api", "mta", "tracker", "inbound"}
PRODUCTION = load_settings(ROOT / "configs" / "production.toml", environ={})


def _service(path: Path) -> dict[str, list[str]]:
    """The [Service] section, every value of a key that may repeat."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _role(path: Path) -> str:
    return path.stem.removeprefix("penguinmails-")


def test_one_unit_per_role():
    assert {_role(p) for p in UNITS} == ROLES
    for path in UNITS:  # plain INI as systemd reads it: no duplicate sections
        configparser.ConfigParser(strict=False, interpolation=None).read(path)


@pytest.mark.parametrize("path", UNITS, ids=_role)
def test_unit_is_hardened_restarts_and_stops_in_time(path: Path):
    service = _service(path)
    role = _role(path)
    first = {k: v[0] for k, v in service.items()}
    assert first["User"] == "penguinmails" and first["Group"] == "penguinmails"
    assert first["ExecStart"].endswith(f"penguinmails.toml {role}")
    assert first["Restart"] == "on-failure"
    for option in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert first[option] == "yes", option
    assert first["ProtectSystem"] == "strict"
    assert first["SystemCallFilter"] == "@system-service"
    if role == "inbound":  # the one role that binds port 25
        assert first["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
        assert first["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    else:
        assert first["CapabilityBoundingSet"] == ""
        assert first["AmbientCapabilities"] == ""
    # Stop is bounded by the role's own grace; systemd must not SIGKILL before that.
    grace = {
        "api": REQUEST_GRACE,
        "tracker": SHUTDOWN_GRACE,
        "inbound": PRODUCTION.mta.shutdown_grace,
        # in-flight messages, then the last outcome writes: each bounded by the grace
        "mta": 2 * PRODUCTION.mta.shutdown_grace,
    }[role]
    assert float(first["TimeoutStopSec"]) > grace
    assert first["Type"] == "notify"
    if role == "mta":
        # The supervisor forwards SIGTERM to its workers once; systemd must not send a second.
        assert first["KillMode"] == "mixed"
        assert first["NotifyAccess"] == "main"
        assert float(first["TimeoutStopSec"]) > grace + FORCE_EXIT_SECONDS


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return debian_tool("systemd-analyze", "systemd")


@pytest.fixture
def venv_binary(tmp_path: Path) -> str:
    """The installed console script; a stand-in where this environment has none."""
    real = Path(sys.executable).parent / "penguinmails"
    if real.exists():
        return str(real)
    stub = tmp_path / "penguinmails"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return str(stub)


def _verify(systemd_analyze: str, unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    # Unknown keys are only warnings (exit 0), so any output fails the test too.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("path", UNITS, ids=_role)
def test_systemd_analyze_verify(path: Path, tmp_path: Path, venv_binary: str, systemd_analyze: str):
    text = path.read_text()
    assert INSTALLED in text
    # verify checks that ExecStart binaries exist: point them at this checkout's venv.
    unit = tmp_path / path.name
    unit.write_text(text.replace(INSTALLED, venv_binary))
    _verify(systemd_analyze, unit)


CREDENTIAL_LINE = "LoadCredential=penguinmails-secret-key:/etc/penguinmails/secret.key"


@pytest.mark.parametrize("path", UNITS, ids=_role)
def test_unit_shows_how_to_pass_the_server_key_as_a_credential(path: Path):
    # Commented out: with the line in force, systemd refuses to start the unit until the
    # file exists, and a first install has none.
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert "#" + CREDENTIAL_LINE in lines
    assert "LoadCredential" not in _service(path)


@pytest.mark.parametrize("path", UNITS, ids=_role)
def test_unit_with_the_credential_enabled_still_verifies(
    path: Path, tmp_path: Path, venv_binary: str, systemd_analyze: str
):
    text = path.read_text().replace("#" + CREDENTIAL_LINE, CREDENTIAL_LINE)
    unit = tmp_path / path.name
    unit.write_text(text.replace(INSTALLED, venv_binary))
    assert _service(unit)["LoadCredential"] == [CREDENTIAL_LINE.partition("=")[2]]
    _verify(systemd_analyze, unit)


def test_maintenance_runs_hourly_from_a_timer_and_verifies(
    tmp_path: Path, venv_binary: str, systemd_analyze: str
):
    service = _service(MAINTAIN)
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][0].endswith(" maintain")
    assert service["User"] == ["penguinmails"] and service["NoNewPrivileges"] == ["yes"]
    timer = configparser.ConfigParser(interpolation=None)
    timer.read(TIMER)
    assert timer["Timer"]["OnCalendar"] == "hourly"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # The timer starts the service of its own name; verify both, side by side.
    for path in (MAINTAIN, TIMER):
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALLED, venv_binary))
    _verify(systemd_analyze, tmp_path / MAINTAIN.name)
    _verify(systemd_analyze, tmp_path / TIMER.name)


# -- sd_notify ---------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A socket path must fit in 108 bytes, which a deep pytest tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="pm-sd-") as name:
        yield Path(name)


@contextlib.contextmanager
def _listening(address: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(5)
        yield sock
    finally:
        sock.close()


def test_notify_sends_a_datagram_to_a_path_socket(short_dir: Path):
    path = str(short_dir / "notify")
    with _listening(path) as sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1"
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_sends_to_an_abstract_socket():
    name = f"penguinmails-test-{os.getpid()}-{id(object())}"
    with _listening("\0" + name) as sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


def test_notify_outside_systemd_or_to_nobody_is_false(short_dir: Path):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(short_dir / "absent")}) is False


def test_notify_reads_the_process_environment(short_dir: Path, monkeypatch):
    path = str(short_dir / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with _listening(path) as sock:
        assert notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize(
    "role", ["mta", "mta --processes 2", "api", "tracker", "inbound"], ids=str.split
)
async def test_a_role_process_notifies_ready_then_stopping(
    role: str, database_url: str, tmp_path: Path, short_dir: Path
):
    """A supervisor (`mta --processes 2`) speaks for its workers: one READY=1 once all of
    them are, nothing from the workers themselves."""
    path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "NOTIFY_SOCKET": path,
            "PENGUINMAILS_DATABASE__URL": database_url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(tmp_path / "var"),
            "PENGUINMAILS_SECURITY__SECRET_KEYS": '["systemd-test-key"]',
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",
            "PENGUINMAILS_API__LISTEN": free_listen(),
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__LISTEN": free_listen(),
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
            "PENGUINMAILS_INBOUND__LISTEN": free_listen(),
            "PENGUINMAILS_INBOUND__METRICS_LISTEN": "",
        }
    )
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        *role.split(),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ready = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
        assert ready == b"READY=1"
        assert proc.returncode is None  # ready while running, not on the way out
        proc.send_signal(signal.SIGTERM)
        stopping = await asyncio.wait_for(loop.sock_recv(sock, 4096), 15)
        assert stopping == b"STOPPING=1"
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        with pytest.raises(BlockingIOError):
            sock.recv(4096)  # nothing more
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
