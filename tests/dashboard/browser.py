"""Headless Chromium from Debian's `chromium` package, driven by Playwright.

Playwright's own browser downloads are never used: `launch` points it at /usr/bin/chromium.
`ensure_installed` installs the Debian package when it is missing and we are root (a fresh
CI machine, as .ci/run does too), so the browser suite never skips for want of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work in a container without a GPU, a sandbox-capable kernel or network access
# beyond loopback; each run gets a fresh profile (--user-data-dir via launch_persistent_context
# would also do; Playwright's launch makes a temporary one and removes it).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A desktop Chrome's user agent: the tracker classifies HeadlessChrome as a machine, and the
# suite reads a person's open and click.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


def ensure_installed() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("chromium is missing; install Debian's chromium package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM
