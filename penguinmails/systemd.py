"""Readiness for systemd's `Type=notify`: the sd_notify protocol, without libsystemd.

systemd passes the path of a datagram socket in `$NOTIFY_SOCKET`; a service writes
newline-separated `KEY=VALUE` assignments to it: `READY=1` once it is serving (so units
ordered after it start only then, and `systemctl start` returns only then), `STOPPING=1` when
it begins to shut down. A name starting with '@' is an abstract socket (a leading NUL byte
in the address). Outside systemd the variable is unset and `notify` does nothing, so the
roles call it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A datagram to a full receive queue would block; the service manager reads at once, and a
# readiness message is never worth stalling the event loop for longer than this.
SEND_TIMEOUT = 1.0


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; True if it was sent.

    False when not run by systemd (no `$NOTIFY_SOCKET`), for a socket type this does not
    speak (vsock), or when the send fails: readiness is advisory, never a reason to crash.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning(
            "could not notify the service manager",
            extra={"action": "sd_notify", "state": state, "error": str(exc)},
        )
        return False
    return True
