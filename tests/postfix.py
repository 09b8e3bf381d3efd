"""A throwaway Postfix: its own master, smtpd, cleanup and queue manager in a temporary
directory, listening on 127.0.0.1 and discarding whatever it accepts.

Postfix's smtpd is the reference server for what our client does on the wire: it advertises
PIPELINING and CHUNKING and, with `smtpd_forbid_unauth_pipelining`, disconnects a client
that pipelines where RFC 2920 does not allow it ("SMTP protocol synchronization"); with
`smtpd_forbid_bare_newline` it refuses bare LF in message content. Its access tables answer
the fault cases: a sender refused at MAIL, a recipient refused at RCPT, a sender whose
transactions are refused at DATA/BDAT.

The instance is the `master` daemon in the foreground (`master -d -c DIR`), not `postfix
start`: the wrapper script's integrity checks assume the system's own directories. Master
runs as root (as Postfix always does) and its services run as the `postfix` user. The
Debian package brings the binaries and the user; `ensure_installed` installs it when it is
missing and we are root (a fresh CI machine), so the tests never skip for want of it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MASTER = Path("/usr/lib/postfix/sbin/master")
SMTP_SINK = Path("/usr/sbin/smtp-sink")

REFUSED_SENDER = "mail-refused@sender.test"  # 550 at MAIL
REFUSED_RECIPIENT = "refused@dest.test"  # 550 at RCPT
DATA_REFUSED_SENDER = "data-refused@sender.test"  # 554 at DATA or BDAT
DEFERRED_RECIPIENT = "later@dest.test"  # 450 at RCPT

_QUEUE_DIRS = (
    "active bounce corrupt defer deferred flush hold incoming maildrop pid private public"
    " saved trace"
).split()

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
127.0.0.1:{pipelining_port} inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=chunking
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
proxymap  unix - - n - - proxymap
discard   unix - - n - - discard
error     unix - - n - - error
retry     unix - - n - - error
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
default_transport = discard
relay_transport = discard
local_transport = discard
# master's stdout, which the fixture sends to a file
maillog_file = /dev/stdout
smtpd_forbid_unauth_pipelining = yes
smtpd_forbid_bare_newline = yes
smtpd_delay_reject = no
smtpd_sender_restrictions =
    check_sender_access inline:{{ {{ {refused_sender}=550 5.7.1 sender refused }} }}
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {{ {refused_recipient}=550 5.1.1 no such user }},
        {{ {deferred_recipient}=450 4.2.1 try later }} }},
    permit_mynetworks, reject
smtpd_data_restrictions = reject_unauth_pipelining,
    check_sender_access inline:{{ {{ {data_refused}=554 5.7.1 data refused }} }}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_installed() -> None:
    """Install Postfix's package when it is missing (we must be root, as CI is)."""
    if MASTER.exists() and SMTP_SINK.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError("Postfix is not installed and we are not root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
        env=env,
    )
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


class Postfix:
    """`start()`, then `.port` offers PIPELINING and CHUNKING, `.pipelining_port` the same
    smtpd without CHUNKING; `log()` is what Postfix logged; `stop()` ends the master.
    Used by the tests (a session fixture) and by `benchmarks/wan.py`."""

    def __init__(self) -> None:
        # Its own directory under /tmp rather than pytest's: pytest's are 0700, and the
        # services, running as `postfix`, must reach the queue.
        self.root = Path(tempfile.mkdtemp(prefix="penguinmails-postfix-"))
        self.port = 0
        self.pipelining_port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def hop(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.root / "master.log").read_text(errors="replace")

    async def start(self) -> Postfix:
        await asyncio.to_thread(ensure_installed)
        self.port, self.pipelining_port = _free_port(), _free_port()
        conf, queue = self.root / "conf", self.root / "queue"
        for directory in (conf, self.root / "data", *(queue / d for d in _QUEUE_DIRS)):
            directory.mkdir(parents=True, exist_ok=True)
        (conf / "master.cf").write_text(
            _MASTER_CF.format(port=self.port, pipelining_port=self.pipelining_port)
        )
        (conf / "main.cf").write_text(
            _MAIN_CF.format(
                root=self.root,
                refused_sender=REFUSED_SENDER,
                refused_recipient=REFUSED_RECIPIENT,
                deferred_recipient=DEFERRED_RECIPIENT,
                data_refused=DATA_REFUSED_SENDER,
            )
        )
        # Postfix's own ownership rules: the queue is the mail owner's, maildrop and public
        # are the setgid group's, the top and pid/ stay root's.
        for path in [self.root / "data", *queue.iterdir()]:
            shutil.chown(path, "postfix")
        for name in ("maildrop", "public"):
            shutil.chown(queue / name, group="postdrop")
        self.root.chmod(0o755)
        with (self.root / "master.log").open("wb") as out:
            self._process = await asyncio.create_subprocess_exec(
                str(MASTER), "-d", "-c", str(conf), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self._process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Postfix did not start:\n{self.log()}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return self

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
