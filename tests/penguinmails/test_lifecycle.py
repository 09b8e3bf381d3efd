"""How every role starts and stops, through real `penguinmails` processes: a role refuses to
start on a schema with pending migrations, and while the first SIGTERM or SIGINT drains, a
second one ends the process at once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import free_listen, queue_messages, role_env, wait_for

ROLES = ["mta", "api", "tracker", "inbound"]


def _listeners() -> dict[str, str]:
    return {
        "PENGUINMAILS_API__LISTEN": free_listen(),
        "PENGUINMAILS_TRACKER__LISTEN": free_listen(),
        "PENGUINMAILS_INBOUND__LISTEN": free_listen(),
    }


async def _start(role: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        role,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("role", ROLES)
async def test_a_role_refuses_to_start_with_migrations_pending(
    role: str, pool: asyncpg.Pool, database_url: str, tmp_path: Path
):
    # The schema as an older release left it, as far as the bookkeeping says: the newest
    # migration is not recorded as applied.
    newest = await pool.fetchval(
        "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM"
        " schema_migrations) RETURNING name"
    )
    proc = await _start(role, role_env(database_url, tmp_path / "var", **_listeners()))
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    message = stderr.decode()
    assert proc.returncode == 1, message
    assert f"1 migration(s) pending ({newest} first)" in message
    assert "run `penguinmails migrate` first" in message
    # Migrating is the operator's step (`penguinmails migrate`, ExecStartPre), never a role's.
    recorded = await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = $1", newest)
    assert recorded == 0


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract-namespace datagram socket to read what the role tells systemd."""
    name = f"penguinmails-lifecycle-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_second_stop_signal_ends_a_draining_role_at_once(
    second: signal.Signals,
    pool: asyncpg.Pool,
    database_url: str,
    smtp_peer,
    tmp_path: Path,
    notify_socket: tuple[str, socket.socket],
):
    address, sock = notify_socket
    loop = asyncio.get_running_loop()
    # A message in flight, its DATA held by the peer (a tarpit), and a minute of grace to
    # finish it: after the first signal the MTA waits for it, so only the second signal can
    # end the process now, and it must not stop to say QUIT to a peer inside DATA.
    gate = smtp_peer.hold("DATA")
    await queue_messages(pool, ["held@dest.test"])
    env = role_env(
        database_url,
        tmp_path / "var",
        NOTIFY_SOCKET=address,
        PENGUINMAILS_MTA__ROUTES=f'{{"dest.test": "{smtp_peer.hop}"}}',
        PENGUINMAILS_MTA__SHUTDOWN_GRACE="60",
    )
    proc = await _start("mta", env)
    try:
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 30) == b"READY=1"
        await wait_for(lambda: gate.held, timeout=30)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 15) == b"STOPPING=1"
        assert proc.returncode is None and gate.held  # draining: the message is still waiting

        proc.send_signal(second)
        # Well inside the minute the first signal granted: the process did not wait for it.
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, err
        # It says so, last, rather than ending on an unhandled exception's traceback.
        assert err.decode().strip().splitlines()[-1] == "penguinmails: stopped at once"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
