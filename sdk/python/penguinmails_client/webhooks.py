"""Verifying a webhook request, standard library only, for both signatures the server sends:
`webhook-signature` (Standard Webhooks: HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed with
the base64 part of a whsec_ secret or a secret's UTF-8 bytes; replay-safe through the
timestamp) and `X-PenguinMails-Signature` (`sha256=<hex>` of the raw body, keyed with the
secret string). With headers that carry webhook-signature, that one decides."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_SECONDS = 300


def _standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def verify_webhook_signature(
    payload: bytes | str,
    headers: Mapping[str, str] | str,
    secret: str,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if `payload` (the raw body as received) is signed with `secret`. `headers` is the
    request's headers (any case), or the X-PenguinMails-Signature value itself."""
    body = payload.encode() if isinstance(payload, str) else payload
    if isinstance(headers, str):
        given = {"x-penguinmails-signature": headers}
    else:
        given = {name.lower(): value for name, value in headers.items()}
    standard = given.get("webhook-signature")
    if standard is not None:
        msg_id, timestamp = given.get("webhook-id", ""), given.get("webhook-timestamp", "")
        current = time.time() if now is None else now
        if not msg_id or not timestamp.isdigit() or abs(current - int(timestamp)) > tolerance:
            return False
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()
        for candidate in standard.split():
            version, _, signature = candidate.partition(",")
            try:
                decoded = base64.b64decode(signature, validate=True)
            except binascii.Error:
                continue
            if version == "v1" and hmac.compare_digest(decoded, expected):
                return True
        return False
    simple = given.get("x-penguinmails-signature")
    if not simple:
        return False
    expected_simple = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(simple.strip().encode(), expected_simple.encode())
