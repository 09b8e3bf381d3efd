"""Signed VERP addresses on the bounce domain: which message a bounce or a mailed unsubscribe
is about, with no lookup table and no way to forge one.

    b-<queue id>-<mac>@<bounce domain>   the envelope sender (Return-Path) of every message
    u-<queue id>-<mac>@<bounce domain>   the mailto: half of List-Unsubscribe

The MAC is 80 bits of HMAC-SHA256 under a key derived for "verp" from the server keys, in
lower-case base32: relays and mailbox providers are free to change the case of a local part,
and a case-sensitive token (base64) would stop verifying when they do. The queue id is plain
decimal, which costs nothing in secrecy (the tracker URLs carry it too) and helps whoever
reads a bounce by hand. Every server key verifies, so keys rotate without losing bounces for
mail still in flight.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence

from penguinmails.config import Settings
from penguinmails.secrets import KeyedMac, derive, server_keys

MAC_BYTES = 10
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_SHIFTS = range(MAC_BYTES * 8 - 5, -1, -5)
BOUNCE = "b"
UNSUBSCRIBE = "u"
_LOCAL = re.compile(r"^([bu])-([0-9]{1,19})-([a-z2-7]{16})$")


class Verp:
    def __init__(self, keys: Sequence[bytes], bounce_domain: str) -> None:
        if not keys:
            raise ValueError("at least one server key is required")
        self._keys = [KeyedMac(derive(k, "verp")) for k in keys]
        self.domain = bounce_domain.lower()

    @classmethod
    def from_settings(cls, settings: Settings) -> Verp:
        return cls(server_keys(settings), settings.mta.bounce_domain)

    def encode(self, message_id: int) -> str:
        """The return path for queue message `message_id`."""
        return self._address(BOUNCE, message_id)

    def unsubscribe_address(self, message_id: int) -> str:
        """The mailto: target of List-Unsubscribe for queue message `message_id`."""
        return self._address(UNSUBSCRIBE, message_id)

    def decode(self, address: str) -> int | None:
        """The queue id a bounce address (`b-...`) stands for; None unless we signed it."""
        return self._decode(address, BOUNCE)

    def decode_unsubscribe(self, address: str) -> int | None:
        """The queue id a mailed unsubscribe (`u-...`) stands for; None unless we signed it."""
        return self._decode(address, UNSUBSCRIBE)

    def _address(self, kind: str, message_id: int) -> str:
        if message_id < 0:
            raise ValueError("queue ids are not negative")
        return f"{kind}-{message_id}-{_mac(self._keys[0], kind, message_id)}@{self.domain}"

    def _decode(self, address: str, kind: str) -> int | None:
        """The domain is not checked: the MAC is the proof, and an MX may serve aliases."""
        local, at, _domain = address.strip().strip("<>").rpartition("@")
        match = _LOCAL.match(local.lower()) if at else None
        if match is None or match.group(1) != kind:
            return None
        message_id = int(match.group(2))
        given = match.group(3)
        for key in self._keys:
            if hmac.compare_digest(_mac(key, kind, message_id), given):
                return message_id
        return None


def _mac(key: KeyedMac, kind: str, message_id: int) -> str:
    digest = key.digest(f"{kind}:{message_id}".encode())
    # Lower-case base32 of the 80 bits, sixteen characters, what base64.b32encode gives (in
    # Python, several times slower; every message carries two of these).
    bits = int.from_bytes(digest[:MAC_BYTES], "big")
    return "".join([_B32[(bits >> shift) & 31] for shift in _B32_SHIFTS])
