"""Conversion tokens: signed for their purpose, good for 30 days, one use whatever their
spelling, and added to http(s) links only."""

from __future__ import annotations

import base64

import pytest

from penguinmails import conversions
from penguinmails.links import Click, Links
from penguinmails.tokens import BadToken, LinkSigner

NOW = 1_800_000_000.0
signer = LinkSigner([b"k1"])


def test_a_token_names_the_message_the_link_and_the_moment_of_the_click():
    token = conversions.issue(signer, 42, 3, NOW)
    click = conversions.verify(signer, token, NOW + 60)
    assert (click.queue_id, click.link_index, click.clicked_at) == (42, 3, NOW)
    assert conversions.issue(signer, 42, 3, NOW + 0.001) != token  # another click, another one


def test_a_token_expires_thirty_days_after_the_click():
    token = conversions.issue(signer, 42, 3, NOW)
    conversions.verify(signer, token, NOW + 30 * 86400)
    with pytest.raises(conversions.ExpiredToken):
        conversions.verify(signer, token, NOW + 30 * 86400 + 1)


def test_only_a_conversion_token_of_our_keys_verifies():
    with pytest.raises(BadToken):
        conversions.verify(LinkSigner([b"other"]), conversions.issue(signer, 1, 0, NOW), NOW)
    click_token = signer.sign("click", 1, 0, "https://shop.test/")
    with pytest.raises(BadToken):
        conversions.verify(signer, click_token, NOW)
    with pytest.raises(BadToken):
        conversions.verify(signer, signer.sign("conversion", "x", 0, 1), NOW)
    rotated = LinkSigner([b"k2", b"k1"])  # a newer key signs; the old one still verifies
    assert conversions.verify(rotated, conversions.issue(signer, 1, 0, NOW), NOW).queue_id == 1


def test_every_spelling_of_a_token_is_one_use():
    token = conversions.issue(signer, 42, 3, NOW)
    payload, mac = token.split(".")
    # base64url leaves spare bits in the last character of the 16-byte MAC (22 characters
    # for 128 bits): flipping one gives another spelling of the same bytes, which verifies.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]
    assert twin != mac
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(mac + "==")
    same = conversions.verify(signer, f"{payload}.{twin}", NOW)
    assert same.token_hash == conversions.verify(signer, token, NOW).token_hash
    resigned = conversions.issue(LinkSigner([b"k2", b"k1"]), 42, 3, NOW)
    assert resigned != token
    assert conversions.verify(LinkSigner([b"k2", b"k1"]), resigned, NOW).token_hash == (
        same.token_hash
    )
    assert token.encode() not in same.token_hash


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.test/p", "https://shop.test/p?pm_cv=T"),
        ("https://shop.test/p?a=1", "https://shop.test/p?a=1&pm_cv=T"),
        ("https://shop.test/p?", "https://shop.test/p?pm_cv=T"),
        ("https://shop.test/p?a=1&", "https://shop.test/p?a=1&pm_cv=T"),
        ("http://shop.test/p?a=1#buy?now", "http://shop.test/p?a=1&pm_cv=T#buy?now"),
        ("HTTPS://shop.test/#", "HTTPS://shop.test/?pm_cv=T#"),
        ("mailto:sales@shop.test?subject=hi", "mailto:sales@shop.test?subject=hi"),
        ("tel:+15551234", "tel:+15551234"),
        ("ftp://shop.test/file", "ftp://shop.test/file"),
    ],
)
def test_the_parameter_goes_into_the_query_of_http_links_only(url, expected):
    assert conversions.with_parameter(url, "pm_cv", "T") == expected
    assert conversions.with_parameter(url, "", "T") == url


def test_the_redirect_carries_a_token_only_when_configured():
    click = Click(42, 3, "https://shop.test/p?a=1")
    off = Links(signer, "http://t.test")
    assert off.redirect_url(click, NOW) == click.url
    on = Links(signer, "http://t.test", conversion_param="ref_token")
    target = on.redirect_url(click, NOW)
    prefix = "https://shop.test/p?a=1&ref_token="
    assert target.startswith(prefix)
    named = conversions.verify(signer, target.removeprefix(prefix), NOW)
    assert (named.queue_id, named.link_index, named.clicked_at) == (42, 3, NOW)
