"""Signed, self-contained tokens for the tracker's links: opens, clicks, unsubscribes.

A token carries its fields and an HMAC over them, so the tracker can trust it without a
database lookup, and nobody can mint one for a URL of their choosing: the click redirect is
never an open redirect. Each purpose ("click", "open", "unsub") signs with its own derived
key, so a token for one purpose is never valid for another. Several server keys may verify
at once, for rotation. (VERP addresses are signed too, in penguinmails.verp: a local part
needs a case-insensitive encoding.)
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from penguinmails.secrets import KeyedMac, derive

MAC_BYTES = 16  # 128-bit tag: ample against forgery, short enough for a URL
_SEP = "\x1f"  # unit separator: never inside the fields we sign (ids, URLs)


class BadToken(ValueError):
    """The token is malformed, or no server key signed it."""


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """base64url without padding: binascii directly, since base64.urlsafe_b64encode's layers
    of Python cost more than the encoding (two per token, seven tokens per message)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise BadToken("not base64url") from exc


class LinkSigner:
    """Signs and verifies the tokens in tracking and unsubscribe links (penguinmails.links)."""

    def __init__(self, server_keys: Sequence[bytes]) -> None:
        if not server_keys:
            raise ValueError("at least one server key is required")
        self._keys = list(server_keys)
        self._derived: dict[str, list[KeyedMac]] = {}

    def _keys_for(self, purpose: str) -> list[KeyedMac]:
        keys = self._derived.get(purpose)
        if keys is None:
            keys = [KeyedMac(derive(k, f"token:{purpose}")) for k in self._keys]
            self._derived[purpose] = keys
        return keys

    def sign(self, purpose: str, *fields: str | int) -> str:
        """`<payload>.<mac>`, both base64url; the first server key signs."""
        text = _SEP.join([str(f) for f in fields])
        if text.count(_SEP) > max(len(fields) - 1, 0):
            raise ValueError("token fields may not contain the separator character")
        payload = text.encode("utf-8")
        mac = self._keys_for(purpose)[0].digest(payload)[:MAC_BYTES]
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, purpose: str, token: str) -> list[str]:
        """The fields of a token any current key signed for `purpose`; else BadToken."""
        payload_text, dot, mac_text = token.partition(".")
        if not dot or not payload_text or not mac_text:
            raise BadToken("malformed token")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
        if len(mac) != MAC_BYTES:
            raise BadToken("malformed token")
        for key in self._keys_for(purpose):
            expected = key.digest(payload)[:MAC_BYTES]
            if hmac.compare_digest(expected, mac):
                try:
                    return payload.decode("utf-8").split(_SEP)
                except UnicodeDecodeError as exc:
                    raise BadToken("malformed payload") from exc
        raise BadToken("signature does not verify")
