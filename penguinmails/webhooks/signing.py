"""Webhook secrets and request signatures.

Secrets are needed in the clear to sign, so they are sealed (AES-GCM) rather than hashed,
under a key derived from the server keys; every server key is tried when opening one, so a
server key can be rotated without losing endpoints. Requests carry the Standard Webhooks
signature and our own `X-PenguinMails-Signature`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as random_secrets
from collections.abc import Sequence

from penguinmails import secrets as secrets_at_rest
from penguinmails.webhooks import InvalidEndpoint

SECRET_PREFIX = "whsec_"
_SEAL_AAD = b"penguinmails:webhook-secret"


def generate_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks format."""
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(32)).decode("ascii")


def check_secret(secret: str) -> str:
    if not 16 <= len(secret) <= 256 or not secret.isascii() or not secret.isprintable():
        raise InvalidEndpoint("secret", "must be 16 to 256 printable ASCII characters")
    if any(c.isspace() for c in secret):
        raise InvalidEndpoint("secret", "must not contain whitespace")
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEndpoint("secret", "a whsec_ secret must be base64") from None
        if not 24 <= len(key) <= 64:
            raise InvalidEndpoint("secret", "a whsec_ secret must hold 24 to 64 bytes")
    return secret


def seal(secret: str, keys: Sequence[bytes]) -> bytes:
    """Encrypt a webhook secret with the newest server key (penguinmails.secrets.seal)."""
    return secrets_at_rest.seal(keys, secret.encode("utf-8"), _SEAL_AAD)


def unseal(blob: bytes, keys: Sequence[bytes]) -> str:
    """Decrypt with whichever server key sealed it; ValueError if none did."""
    return secrets_at_rest.unseal(keys, blob, _SEAL_AAD).decode("utf-8")


def signing_secrets(
    sealed: bytes, previous_sealed: bytes | None, keys: Sequence[bytes]
) -> list[str]:
    """What a request is signed with: the current secret, then the previous one while a
    rotation overlaps (None once it has expired). ValueError if no server key opens one."""
    secrets = [unseal(sealed, keys)]
    if previous_sealed is not None:
        secrets.append(unseal(previous_sealed, keys))
    return secrets


def standard_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks derives: the base64 part of whsec_..., else the bytes."""
    if secret.startswith(SECRET_PREFIX):
        body = secret[len(SECRET_PREFIX) :]
        return base64.b64decode(body + "=" * (-len(body) % 4))
    return secret.encode("utf-8")


def signature_headers(
    webhook_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """Both signatures for one request.

    `webhook-signature` carries one `v1,<base64>` per secret (the current one first, then
    one still valid during a rotation), space separated as the standard asks;
    `X-PenguinMails-Signature` is the HMAC of the raw body under the current secret string.
    """
    if not secrets:
        raise ValueError("at least one secret is required")
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    standard = " ".join(
        "v1,"
        + base64.b64encode(hmac.new(standard_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )
    simple = hmac.new(secrets[0].encode("utf-8"), body, hashlib.sha256).hexdigest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
        "X-PenguinMails-Signature": f"sha256={simple}",
    }
