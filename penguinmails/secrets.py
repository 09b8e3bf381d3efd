"""The server's secret keys: where they come from, and the one place they are read.

Signing (tracking links, VERP return paths) and encryption at rest (DKIM private keys,
webhook secrets) derive their keys from these, each for its own purpose, so one leaked
derived key does not unlock the others.

Sources, first one set wins: `[security] secret_keys`; `[security] key_file`; the systemd
credential `penguinmails-secret-key` (`LoadCredential=`, found in `$CREDENTIALS_DIRECTORY`);
else a key generated once into `<data_dir>/secret.key`. Only that last one is ever written.
A key generated next to the database ends up in the same backups and copies as the data it
protects, and differs from host to host, so production points at a file of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from penguinmails.config import Settings

KEY_FILE = "secret.key"
CREDENTIAL = "penguinmails-secret-key"


class KeySourceError(Exception):
    """A key source that is set but cannot be used; the message names it."""

    def __init__(self, name: str, problem: str, *, setting: bool) -> None:
        super().__init__(f"{name}: {problem}")
        self.setting = setting  # a configuration key (so the config file is worth naming)


def server_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """The keys, newest first, from the first source that is set (see the module doc)."""
    keys = _configured_keys(settings, os.environ if environ is None else environ)
    if keys is not None:
        return keys
    return [_load_or_create(settings.paths.data_dir / KEY_FILE)]


def check_key_sources(settings: Settings, environ: Mapping[str, str]) -> None:
    """Raise KeySourceError for a set source that cannot be used; write nothing.

    A key_file is checked even where secret_keys take precedence: a path that is set but
    wrong is a mistake to report, not to ignore until someone removes secret_keys.
    """
    if settings.security.key_file is not None:
        _read_key_file(settings.security.key_file)
    _configured_keys(settings, environ)


def _configured_keys(settings: Settings, environ: Mapping[str, str]) -> list[bytes] | None:
    """Keys from the operator's sources; None when none is set."""
    security = settings.security
    if security.secret_keys:
        return [k.encode() for k in security.secret_keys]
    if security.key_file is not None:
        return _read_key_file(security.key_file)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL
        if path.exists():
            return _read_keys(path, f"systemd credential {CREDENTIAL}", private=False)
    return None


def _read_key_file(path: Path) -> list[bytes]:
    return _read_keys(path, "security.key_file", private=True, setting=True)


def _read_keys(path: Path, name: str, *, private: bool, setting: bool = False) -> list[bytes]:
    """One key a line, newest first. `private`: refuse a file open to group or others.

    The mode is checked on the opened file, so it is the file that is read that was checked.
    (systemd's credentials need no such check: only the service can read them.)
    """

    def fail(problem: str) -> KeySourceError:
        return KeySourceError(name, f"{path} {problem}", setting=setting)

    try:
        # O_NONBLOCK: a FIFO put in the key's place is refused below, not waited on forever.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise fail("does not exist") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise fail("is not a regular file")
        if private and mode & 0o077:
            raise fail(
                f"is open to group or others (mode {stat.S_IMODE(mode):04o}): a server key "
                "must be readable by this service alone; chmod 600 it (or 400)"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    content = b"".join(chunks)
    keys = [line.strip() for line in content.splitlines() if line.strip()]
    if not keys:
        raise fail("holds no key (one a line, newest first)")
    return keys


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


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class KeyedMac:
    """HMAC-SHA256 (RFC 2104) under one key, for the composer's per-message tokens.

    The key's padded inner and outer hash states are computed once and copied per message:
    half the cost of `hmac.digest`, which has OpenSSL set up a fresh HMAC context on every
    call, and a message signs nine of these.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


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


def identity_relay_aad(public_id: str) -> bytes:
    """What a sending identity's relay password is sealed to (the API seals, the MTA opens):
    a sealed password copied onto another identity's row does not open."""
    return f"identity-relay:{public_id}".encode()
