"""SpamAssassin for the tests that score our content with its local rules: installed from
Debian's package when missing (as tests/postfix.py installs Postfix; `.ci/run` installs it
first), never skipped."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_spamassassin() -> str:
    """The `spamassassin` program, installed with apt-get when it is not yet there."""
    found = shutil.which("spamassassin")
    if found is not None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "spamassassin"], check=True, env=env)
    found = shutil.which("spamassassin")
    assert found is not None, "apt-get installed spamassassin but it is not on PATH"
    return found
