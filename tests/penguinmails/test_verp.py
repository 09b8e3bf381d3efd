"""VERP return paths: each names one queue message, signed, so only our own bounces match."""

from __future__ import annotations

from penguinmails.verp import Verp

KEYS = [b"test-key-one"]
VERP = Verp(KEYS, "bounces.example.com")


def test_verp_round_trips_survives_case_changes_and_refuses_forgeries():
    address = VERP.encode(123456789)
    assert address.endswith("@bounces.example.com")
    assert VERP.decode(address) == 123456789
    assert VERP.decode(address.upper()) == 123456789
    assert VERP.decode(f"<{address}>") == 123456789
    forged = address.replace("b-123456789-", "b-123456780-")
    assert VERP.decode(forged) is None
    assert VERP.decode("postmaster@bounces.example.com") is None
    assert VERP.decode(VERP.unsubscribe_address(5)) is None  # kinds do not mix
    assert Verp([b"other"], "bounces.example.com").decode(address) is None
    assert Verp([b"new", *KEYS], "x.test").decode(address) == 123456789  # rotation
