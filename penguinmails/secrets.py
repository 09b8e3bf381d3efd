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
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


# -- encryption at rest ------------------------------------------------------------------------
# Secrets we must be able to use again (DKIM private keys, webhook signing secrets) cannot be
# hashed, so they are sealed: AES-256-GCM under a key derived for "at-rest", with associated
# data that binds the ciphertext to what it belongs to (so it cannot be moved to another row).
# Layout: version byte, 12-byte nonce, ciphertext and tag.

SEAL_VERSION = b"\x01"
_NONCE = 12


class SealError(ValueError):
    """Not a sealed blob, or no configured server key opens it."""


def seal(keys: Sequence[bytes], plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt with the newest server key."""
    nonce = secrets.token_bytes(_NONCE)
    return SEAL_VERSION + nonce + AESGCM(derive(keys[0], "at-rest")).encrypt(nonce, plaintext, aad)


def unseal(keys: Sequence[bytes], blob: bytes, aad: bytes) -> bytes:
    """Decrypt with whichever server key sealed it, so server keys can rotate."""
    if blob[:1] != SEAL_VERSION or len(blob) < 1 + _NONCE + 16:
        raise SealError("unknown sealed format")
    nonce, sealed = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
    for key in keys:
        try:
            return AESGCM(derive(key, "at-rest")).decrypt(nonce, sealed, aad)
        except InvalidTag:
            continue
    raise SealError("no configured server key opens it (was a server key removed?)")
