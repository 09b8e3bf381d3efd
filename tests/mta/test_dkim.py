"""The DKIM fast path, held to dkimpy's verifier over a generated corpus of messages.

Ed25519 signatures are checked through the `ed25519_for_dkimpy` stand-in (tests/mta/conftest.py),
so every other step (record parsing, canonicalisation, header selection, body hash) is still
dkimpy's own.
"""

from __future__ import annotations

import re

import dkim as dkimpy
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mta import dkim
from tests.helpers import dnsfunc_for

pytestmark = pytest.mark.usefixtures("ed25519_for_dkimpy")

DOMAIN = "acme.test"


def _make(algorithm: dkim.Algorithm, selector: str) -> tuple[dkim.DkimKey, str]:
    der, public = dkim.generate(algorithm)
    key = dkim.load_key(DOMAIN, selector, algorithm, der)
    return key, dkim.txt_record(DOMAIN, selector, algorithm, public)


RSA_KEY, RSA_RECORD = _make(dkim.RSA, "rsa1")
ED_KEY, ED_RECORD = _make(dkim.ED25519, "ed1")


DNS = dnsfunc_for(RSA_RECORD, ED_RECORD)


def verify(message: bytes, idx: int = 0) -> bool:
    """dkimpy's verdict on signature `idx`; a failure it raises for counts as False."""
    try:
        return bool(dkimpy.DKIM(message).verify(idx=idx, dnsfunc=DNS))
    except dkimpy.DKIMException:
        return False


# -- generated messages ---------------------------------------------------------------------

_unicode = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"),
    max_size=40,
)
_ws = st.sampled_from(["", " ", "  ", "\t", " \t "])


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    """Raw values as other software writes them: folded, odd spacing, raw UTF-8."""
    words = draw(st.lists(_unicode.filter(lambda s: s.strip() != ""), min_size=1, max_size=5))
    out = draw(_ws)
    for i, word in enumerate(words):
        word = word.replace("\r", "").replace("\n", "")
        if i:
            out += draw(st.sampled_from([" ", "  ", "\t", "\r\n ", "\r\n\t", " \r\n  "]))
        out += word
    return (out + draw(_ws)).encode("utf-8")


@st.composite
def message(draw: st.DrawFn) -> bytes:
    headers = [
        (b"From", b" " + draw(header_value()) + b" <news@acme.test>"),
        (b"To", b" someone@dest.test"),
        (b"Subject", b" " + draw(header_value())),
        (b"Date", b" Mon, 01 Jan 2024 00:00:00 +0000"),
        (b"Message-ID", b" <x@acme.test>"),
    ]
    extra = draw(st.lists(st.sampled_from([b"X-Tag", b"Cc", b"Reply-To", b"To"]), max_size=3))
    for name in extra:
        headers.insert(draw(st.integers(0, len(headers))), (name, draw(header_value())))
    lines = draw(
        st.lists(
            st.one_of(
                _unicode,
                st.text(alphabet=" \t.", max_size=5),
                st.text(alphabet="ab ", min_size=900, max_size=2000),  # long lines
                st.just("."),  # a lone dot: the transport's business, not ours
            ),
            max_size=12,
        )
    )
    newline = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    body = newline.join(line.replace("\r", "").replace("\n", "") for line in lines)
    body += draw(st.sampled_from(["", newline, newline * 3, " ", " \t" + newline]))
    head = b"".join(n + b":" + v + b"\r\n" for n, v in headers)
    return head + b"\r\n" + body.encode("utf-8")


SAMPLE = (
    b"From: =?utf-8?b?WsO2ZQ==?= <news@acme.test>\r\nTo: a@dest.test\r\n"
    b"Subject: hello\r\n   folded  \t there\r\n\r\n"
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
@example(SAMPLE)
@example(SAMPLE + b"body  \r\n\r\n\r\n")
@example(SAMPLE + b" \t ")
@example(SAMPLE.replace(b"\r\n", b"\n") + b"bare\nLF\rCR\n")
def test_every_signature_verifies_with_dkimpy(raw):
    signed = dkim.sign_message([RSA_KEY, ED_KEY], raw)
    assert verify(signed, 0), signed
    assert verify(signed, 1), signed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: dkim.normalise_newlines(b.replace(b"\x00", b""))))
def test_relaxed_body_matches_dkimpy(body):
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # as on the wire
    assert dkim.relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(header_value())
def test_relaxed_header_matches_dkimpy(value):
    [(name, expected)] = Relaxed.canonicalize_headers([(b"Subject", value)])
    assert dkim.relaxed_header(b"Subject", value) == name + b":" + expected


# -- the properties receivers rely on -------------------------------------------------------


def _tags(signed: bytes) -> dict[str, str]:
    header = signed.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0].decode()
    value = re.sub(r"\s+", "", header.split(":", 1)[1])
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_from_is_over_signed_so_a_second_from_breaks_the_signature():
    signed = dkim.sign_message([RSA_KEY], SAMPLE + b"Hi\r\n")
    tags = _tags(signed)
    assert tags["h"].split(":").count("from") == 2
    assert "l" not in tags
    assert tags["c"] == "relaxed/relaxed"
    assert verify(signed)
    head, body = signed.split(b"\r\n\r\n", 1)
    forged = head + b"\r\nFrom: ceo@acme.test\r\n\r\n" + body
    assert not verify(forged)


def test_appended_content_breaks_the_signature():
    signed = dkim.sign_message([RSA_KEY], SAMPLE + b"Hi\r\n")
    assert not verify(signed + b"Click here\r\n")
    assert verify(signed + b"\r\n\r\n")  # trailing empty lines are not content


def test_bare_line_endings_never_reach_the_output():
    signed = dkim.sign_message([RSA_KEY], b"From: a@acme.test\nSubject: x\n\nline\rnext\n.\n")
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert b"\r" not in signed.replace(b"\r\n", b"")
    assert verify(signed)


def test_records_are_dns_ready():
    assert RSA_RECORD.startswith("rsa1._domainkey.acme.test. IN TXT ")
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', RSA_RECORD))
    assert "k=ed25519" in ED_RECORD and "k=rsa" in RSA_RECORD


def test_a_body_not_ending_in_crlf_is_refused():
    with pytest.raises(dkim.DkimError):
        dkim.sign([RSA_KEY], [(b"From", b" a@acme.test")], b"no newline")
