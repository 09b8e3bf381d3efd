"""A real streaming replica of the tests' embedded Postgres.

`pg_basebackup -R` (from the binaries pgserver ships) copies the running cluster and writes
the standby's connection to it; the copy is started as a hot standby on its own socket, and
replays the primary's WAL as it comes. Like the primary, it runs as the data directory's
owner (pgserver's own user when the tests run as root).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

PORT = 5433  # only names the socket file: the standby listens on no TCP port


def _bindir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # type: ignore[import-untyped]

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


class Replica:
    def __init__(self, primary_socket_dir: str) -> None:
        self.primary = primary_socket_dir
        # Under /tmp rather than pytest's 0700 directories: the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="penguinmails-replica-"))
        self.data = self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.data))}&port={PORT}"

    def _run(self, *argv: str | Path) -> None:
        as_owner: dict[str, object] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwuid(os.stat(self.primary).st_uid)
            shutil.chown(self.root, owner.pw_uid, owner.pw_gid)
            as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(a) for a in argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            **as_owner,  # type: ignore[arg-type]
        )

    async def start(self) -> Replica:
        bindir = _bindir()
        await asyncio.to_thread(
            self._run,
            bindir / "pg_basebackup",
            "-h",
            self.primary,
            "-U",
            "postgres",
            "-D",
            self.data,
            "-c",
            "fast",  # checkpoint now, not spread over minutes
            "-R",  # standby.signal and primary_conninfo: a streaming standby
            "-X",
            "stream",
        )
        options = f"-h '' -k {self.data} -p {PORT}"
        await asyncio.to_thread(
            self._run,
            bindir / "pg_ctl",
            "-D",
            self.data,
            "-w",
            "-l",
            self.root / "log",
            "-o",
            options,
            "start",
        )
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(
            self._run, _bindir() / "pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop"
        )
        shutil.rmtree(self.root, ignore_errors=True)
