"""A throwaway PgBouncer in transaction mode in front of the tests' embedded Postgres.

Transaction mode is the one that breaks session state: a client's next transaction may run
on another server session, so LISTEN, session advisory locks and named prepared statements
do not survive it. That is what the roles must cope with behind it (`[database] pooler`).

PgBouncer reaches Postgres on its Unix socket, in the data directory, so it runs as the
directory's owner (pgserver's own user when the tests run as root; PgBouncer refuses to run
as root anyway). The Debian package brings the binary; `ensure_installed` installs it when
it is missing and we are root (a fresh CI machine), so the tests never skip for want of it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

BINARY = Path("/usr/sbin/pgbouncer")

_INI = """\
[databases]
* = host={socket_dir} port=5432 user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
ignore_startup_parameters = extra_float_digits
logfile = {root}/pgbouncer.log
log_connections = 1
log_disconnections = 0
"""


def ensure_installed() -> None:
    """Install PgBouncer's package when it is missing (we must be root, as CI is)."""
    if BINARY.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError("PgBouncer is not installed and we are not root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, env=env)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """`start()`, then `url(database)` reaches that database through the pooler; `log()` is
    what PgBouncer logged; `stop()` ends it."""

    def __init__(self, socket_dir: str, pool_size: int = 20) -> None:
        self.socket_dir = socket_dir
        self.pool_size = pool_size
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="penguinmails-pgbouncer-"))
        self._process: asyncio.subprocess.Process | None = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self) -> PgBouncer:
        await asyncio.to_thread(ensure_installed)
        self.port = _free_port()
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            _INI.format(
                socket_dir=self.socket_dir, port=self.port, root=self.root, pool_size=self.pool_size
            )
        )
        as_owner: dict[str, object] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwuid(os.stat(self.socket_dir).st_uid)
            shutil.chown(self.root, owner.pw_uid, owner.pw_gid)
            shutil.chown(ini, owner.pw_uid, owner.pw_gid)
            # Dropped in the child itself, so PgBouncer is our child and stop() reaches it.
            as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        self._process = await asyncio.create_subprocess_exec(
            str(BINARY),
            str(ini),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            **as_owner,  # type: ignore[arg-type]
        )
        for _ in range(200):
            if self._process.returncode is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self.log()[-2000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return self
        raise RuntimeError(f"pgbouncer never listened: {self.log()[-2000:]}")

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)  # PgBouncer 1.18's "shut down now"
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
