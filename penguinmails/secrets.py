"""The server's secret keys: where they come from, and the one place they are read.

Signing (tracking links, VERP return paths) and encryption at rest (DKIM private keys,
webhook secrets) derive their keys from these, each for its own purpose, so one leaked
derived key does not unlock the others.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from penguinmails.config import Settings

KEY_FILE = "secret.key"


def server_keys(settings: Settings) -> list[bytes]:
    """The configured keys, newest first; or the generated one kept under the data dir."""
    if settings.security.secret_keys:
        return [k.encode() for k in settings.security.secret_keys]
    path = settings.paths.data_dir / KEY_FILE
    return [_load_or_create(path)]


def _load_or_create(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.urlsafe_b64encode(secrets.token_bytes(32))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its key
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def derive(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose ("tracking", "verp", "at-rest"), from a server key."""
    return hmac.new(key, b"penguinmails:" + purpose.encode(), hashlib.sha256).digest()
