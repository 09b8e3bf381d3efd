"""Composition: personalised, tracked, standards-clean MIME, signed, and delivered by the MTA.

Messages are parsed back with the standard library (no defects allowed) and verified with
dkimpy; the end-to-end test runs the real worker against a real SMTP peer.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import logging
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import dkim as dkimpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta import compose as composing
from mta import dkim
from mta.client import WireMessage
from mta.compose import ComposeError, Composer
from mta.domains import add_domain, show_domain
from penguinmails.links import Links
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.tokens import LinkSigner
from penguinmails.verp import Verp
from tests.helpers import dnsfunc_for, wait_for

pytestmark = pytest.mark.usefixtures("ed25519_for_dkimpy")

KEYS = [b"test-key-one"]
TRACKER = "https://t.example.com"
LINKS = Links(LinkSigner(KEYS), TRACKER)
VERP = Verp(KEYS, "bounces.example.com")
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def make_row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 42,
        "tenant_id": 1,
        "campaign_id": 7,
        "message_id": "0123abcd@acme.test",
        "from_email": "news@acme.test",
        "from_name": "Acme News",
        "recipient": "john@dest.test",
        "recipient_domain": "dest.test",
        "subject": "Hello {{name}}",
        "text_body": "Hi {{name}}",
        "html_body": None,
        "headers": {},
        "personalization": {"name": "John"},
        "settings": {},
    }
    row.update(fields)
    return row


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert not part.defects, part.defects
    for name, value in message.items():
        assert not getattr(value, "defects", ()), (name, value.defects)
    return message


def content(part: Any) -> str:
    """A part's decoded text with the wire's CRLF read as newlines."""
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


def compose_bytes(row: dict[str, Any], keys: list[dkim.DkimKey] | None = None) -> bytes:
    composed = composing.compose(row, links=LINKS, verp=VERP, now=NOW)
    signatures = dkim.sign(keys or [], composed.header_bytes(), composed.body, timestamp=1)
    return composed.to_bytes(signatures)


def assert_crlf_only(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


# -- headers and MIME -----------------------------------------------------------------------


def test_the_system_headers():
    message = parse(compose_bytes(make_row()))
    assert message["Message-ID"] == "<0123abcd@acme.test>"  # from the row, never regenerated
    assert message["Date"].datetime == NOW
    assert message["From"].addresses[0].display_name == "Acme News"
    assert message["To"] == "john@dest.test"
    assert message["Subject"] == "Hello John"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Feedback-ID"] == "7:1:campaign:penguinmails"
    https, mailto = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert https.startswith(f"{TRACKER}/u/")
    assert LINKS.unsubscribe_token(https.rsplit("/", 1)[1]) == 42
    assert mailto.startswith("mailto:") and mailto.endswith("?subject=unsubscribe")
    assert VERP.decode_unsubscribe(mailto[len("mailto:") :].split("?")[0]) == 42


def test_a_retry_renders_the_same_bytes():
    row = make_row(subject="{Hi|Hello|Hey} {{name}}", html_body="<p>{a|b|c|d}</p>")
    assert compose_bytes(row) == compose_bytes(dict(row))


def test_text_only_is_a_single_part():
    message = parse(compose_bytes(make_row()))
    assert message.get_content_type() == "text/plain"
    assert content(message) == "Hi John\n"


def test_text_and_html_make_multipart_alternative():
    message = parse(compose_bytes(make_row(html_body="<p>Hi {{name}}</p>")))
    assert message.get_content_type() == "multipart/alternative"
    plain, page = message.get_payload()
    assert content(plain) == "Hi John\n"
    assert page.get_content_type() == "text/html"
    assert content(page) == "<p>Hi John</p>\n"


def test_html_only_gets_a_derived_text_part():
    page = (
        "<html><head><title>t</title><style>p { color: red }</style></head><body>"
        "<h1>News &amp; views</h1><p>Hello\n{{name}},<br>see <a href='https://x.test/a?b=1&amp;c=2'>"
        "our offer</a>.</p><ul><li>one</li><li>two</li></ul></body></html>"
    )
    message = parse(compose_bytes(make_row(text_body=None, html_body=page)))
    text = content(message.get_body(("plain",)))
    assert text == (
        "News & views\n\nHello John,\nsee our offer (https://x.test/a?b=1&c=2).\n\n- one\n\n- two\n"
    )


def test_the_derived_text_part_picks_the_same_spintax_as_the_html():
    page = "<p>{Hi|Hello|Hey|Howdy} {{name}} &amp; co</p><p>{one|two|three}</p>"
    for i in range(20):
        row = make_row(message_id=f"s{i}@acme.test", text_body=None, html_body=page)
        message = parse(compose_bytes(row))
        html_words = re.sub(r"<[^>]+>", " ", content(message.get_body(("html",)))).split()
        text_words = content(message.get_body(("plain",))).split()
        assert html_words[0] == text_words[0] and html_words[-1] == text_words[-1]
        assert text_words[1:4] == ["John", "&", "co"]


def test_a_page_whose_text_is_no_template_still_gets_a_text_part():
    # Unescaped, "&#123;&#123;x" would read as an unclosed {{; the rendered page is used.
    row = make_row(text_body=None, html_body="<p>&#123;&#123;x {{name}}</p>")
    assert content(parse(compose_bytes(row)).get_body(("plain",))) == "{{x John\n"


def test_html_values_are_escaped_and_text_values_are_not():
    row = make_row(
        personalization={"name": "<script>x</script> & co"},
        text_body="{{name}}",
        html_body="<p>{{name}}</p>",
    )
    message = parse(compose_bytes(row))
    assert content(message.get_body(("plain",))) == "<script>x</script> & co\n"
    assert content(message.get_body(("html",))) == (
        "<p>&lt;script&gt;x&lt;/script&gt; &amp; co</p>\n"
    )


def test_non_ascii_headers_are_rfc2047_and_bodies_quoted_printable():
    row = make_row(
        from_name='Zoë "the" Müller',
        subject="Grüße, {{name}} — " + "ünïcödé " * 20,
        text_body="Ça va? " + "x" * 1200 + "\n",
        headers={"X-Campaign": "Frühling ☀"},
    )
    data = compose_bytes(row)
    assert data.isascii()
    assert_crlf_only(data)
    message = parse(data)
    assert message["From"].addresses[0].display_name == 'Zoë "the" Müller'
    assert message["Subject"] == "Grüße, John — " + "ünïcödé " * 20
    assert message["X-Campaign"] == "Frühling ☀"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(message) == "Ça va? " + "x" * 1200 + "\n"


def test_bodies_are_crlf_only_so_no_smuggling_sequence_reaches_the_wire():
    row = make_row(text_body="a\n.\nb\r.\r\nc\r\n.\n", html_body="<p>x</p>\n.\n<p>y</p>")
    data = compose_bytes(row)
    assert_crlf_only(data)
    assert b"\r\n.\r\n" in data  # a lone dot stays: dot-stuffing is the transport's job
    # Marked so for the delivery client, which then sends it without scanning it again.
    assert type(data) is WireMessage and data.endswith(b"\r\n")


def test_custom_headers_but_not_the_ones_the_system_owns():
    row = make_row(headers={"X-Mailer-Tag": "spring", "Message-ID": "<evil@x>", "From": "x@y.z"})
    message = parse(compose_bytes(row))
    assert message["X-Mailer-Tag"] == "spring"
    assert message.get_all("Message-ID") == ["<0123abcd@acme.test>"]
    assert len(message.get_all("From")) == 1


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"headers": {"X-Evil": "a\r\nBcc: x@evil.test"}}, "header injection"),
        ({"headers": {"Bad Name": "x"}}, "not a header name"),
        ({"personalization": {"name": "a\r\nBcc: x@evil.test"}}, "line break"),
        ({"personalization": {}}, "no value for"),
        ({"subject": "{{name"}, "unclosed"),
        ({"from_email": "not an address"}, "from"),
        ({"recipient": "a@b@c"}, "recipient"),
        ({"message_id": "<x@y>\r\nBcc: z"}, "Message-ID"),
        ({"from_name": "a\x00b"}, "control"),
        ({"personalization": {"name": "\ud800"}}, "cannot be encoded"),
    ],
)
def test_rows_that_cannot_be_rendered_fail_with_compose_error(fields, error):
    with pytest.raises(ComposeError, match=error):
        compose_bytes(make_row(**fields))


# -- tracking -------------------------------------------------------------------------------

TRACKED_PAGE = (
    "<html><body><p>Hi {{name}}</p>"
    '<a href="https://shop.test/p?id=1&amp;u={{name}}">Shop</a> '
    "<A class='x' HREF='http://old.test/'>old</A> "
    '<a data-pm-notrack href="https://private.test/">private</a> '
    '<a href="mailto:sales@acme.test">mail</a> '
    '<a href="{{unsubscribe_url}}">unsubscribe</a> '
    '<a data-href="https://nope.test" href="https://x.test/">x</a>'
    "</body></html>"
)


def test_tracking_rewrites_links_and_adds_the_pixel():
    row = make_row(
        text_body=None,
        html_body=TRACKED_PAGE,
        # Queued with the pixel (penguinmails.messages.tracking_settings wrote it).
        settings={"track_opens": True, "track_clicks": True, "open_pixel": True},
    )
    page = content(parse(compose_bytes(row)).get_body(("html",)))
    hrefs = re.findall(r"""href=["']([^"']+)""", page, re.IGNORECASE)
    clicks = [
        LINKS.click_token(h.rsplit("/", 1)[1]) for h in hrefs if h.startswith(TRACKER + "/c/")
    ]
    assert [(c.queue_id, c.index, c.url) for c in clicks] == [
        (42, 0, "https://shop.test/p?id=1&u=John"),
        (42, 1, "http://old.test/"),
        (42, 2, "https://x.test/"),
    ]
    assert "https://private.test/" in hrefs and "mailto:sales@acme.test" in hrefs
    assert any(h.startswith(TRACKER + "/u/") for h in hrefs)  # unsubscribe left direct
    pixel = re.search(r'<img src="([^"]+)"[^>]*/></body>', page)
    assert pixel is not None
    assert LINKS.open_token(pixel.group(1).rsplit("/", 1)[1]) == 42
    # The text part shows the real destinations, not tracker redirects.
    text = content(parse(compose_bytes(row)).get_body(("plain",)))
    assert "https://shop.test/p?id=1&u=John" in text


@pytest.mark.parametrize(
    "settings_",
    [{}, {"track_opens": False, "track_clicks": False}, {"track_clicks": "yes"}],
)
def test_tracking_is_off_unless_asked_for(settings_):
    row = make_row(html_body=TRACKED_PAGE, settings=settings_)
    page = content(parse(compose_bytes(row)).get_body(("html",)))
    assert TRACKER + "/c/" not in page and "<img" not in page


@pytest.mark.parametrize(
    ("page", "before"),
    [
        ("<body><p>a</p></body>" + "<!-- x -->" * 1000, "</body><!--"),  # far from the end
        ("<body>quoting </BODY > in text</p></body ></html>", "</body ></html>"),
        ("<body>" + "<p>b</p>" * 1000 + "</body>\n</html>", "</body>\n</html>"),
    ],
)
def test_the_pixel_goes_before_the_last_body_end_tag(page, before):
    row = make_row(
        text_body="t", html_body=page, settings={"track_opens": True, "open_pixel": True}
    )
    html_part = content(parse(compose_bytes(row)).get_body(("html",)))
    assert html_part.count("<img") == 1
    assert re.search(r"<img [^>]*/>" + re.escape(before), html_part)


def test_the_pixel_goes_at_the_end_without_a_body_tag():
    row = make_row(html_body="<p>hi</p>", settings={"track_opens": True, "open_pixel": True})
    page = content(parse(compose_bytes(row)).get_body(("html",)))
    assert page.startswith("<p>hi</p><img src=")


def test_a_short_message_without_its_tracking_state_gets_no_pixel():
    """A row queued without `open_pixel` (before it was written, or by another path) is
    judged on its rendered page: short text and no image of its own is no place for a
    1x1 image, which would make it look image-only to filters."""
    short = make_row(html_body="<p>Hi John,</p><p>Quick question.</p>", settings=OPENS)
    assert "<img" not in content(parse(compose_bytes(short)).get_body(("html",)))
    long_text = "<p>" + "Plenty of words in this paragraph. " * 100 + "</p>"
    long = make_row(html_body=long_text, settings=OPENS)
    assert "/o/" in content(parse(compose_bytes(long)).get_body(("html",)))
    shown = '<p>Look: <img src="https://acme.test/chart.png" alt="chart"></p>'
    with_image = make_row(html_body=shown, settings=OPENS)
    assert "/o/" in content(parse(compose_bytes(with_image)).get_body(("html",)))
    # The state written when it was queued wins either way.
    kept_out = make_row(html_body=long_text, settings={**OPENS, "open_pixel": False})
    assert "<img" not in content(parse(compose_bytes(kept_out)).get_body(("html",)))


OPENS = {"track_opens": True}


def test_a_plain_text_send_has_no_html_part_pixel_or_tracked_link():
    row = make_row(
        text_body=None,
        html_body='<p>Hi {{name}},</p><p><a href="https://acme.test/x">the plan</a></p>',
        settings={"track_opens": True, "track_clicks": True, "plain_text": True},
    )
    message = parse(compose_bytes(row))
    assert message.get_content_type() == "text/plain"
    text = content(message)
    assert "the plan (https://acme.test/x)" in text and "/c/" not in text and "/o/" not in text


# -- the Composer and its keys --------------------------------------------------------------


async def test_render_signs_with_cached_keys_and_returns_the_verp_sender(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        records = await add_domain(conn, settings, "acme.test", tenant="acme", algorithm="both")
    tenant = await ensure_tenant(pool, "acme")
    composer = Composer(pool, settings)
    for i in range(30):
        row = make_row(id=i, tenant_id=tenant, message_id=f"m{i}@acme.test")
        sender, data = await composer.render(row)
        assert composer.verp.decode(sender) == i
    assert composer.keys.loads == 1  # no database round trip per message
    dns = dnsfunc_for(*records)
    assert dkimpy.DKIM(data).verify(idx=0, dnsfunc=dns)
    assert dkimpy.DKIM(data).verify(idx=1, dnsfunc=dns)


async def test_a_domain_without_keys_is_sent_unsigned_with_one_warning(pool, make_settings, caplog):
    composer = Composer(pool, make_settings())
    with caplog.at_level(logging.WARNING, logger="mta.compose"):
        for i in range(5):
            _, data = await composer.render(make_row(id=i, message_id=f"u{i}@acme.test"))
    assert b"DKIM-Signature" not in data
    warnings = [r for r in caplog.records if "no DKIM key" in r.getMessage()]
    assert len(warnings) == 1


# -- generated messages ---------------------------------------------------------------------

RSA_DER, RSA_PUBLIC = dkim.generate(dkim.RSA)
ED_DER, ED_PUBLIC = dkim.generate(dkim.ED25519)
CORPUS_KEYS = [
    dkim.load_key("acme.test", "r", dkim.RSA, RSA_DER),
    dkim.load_key("acme.test", "e", dkim.ED25519, ED_DER),
]
CORPUS_DNS = dnsfunc_for(
    dkim.txt_record("acme.test", "r", dkim.RSA, RSA_PUBLIC),
    dkim.txt_record("acme.test", "e", dkim.ED25519, ED_PUBLIC),
)
_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="{}|\u2028\u2029")
_line = st.text(alphabet=_chars, max_size=30)
_body = st.lists(
    st.one_of(
        _line,
        st.text(alphabet="ab \t", min_size=0, max_size=8),
        st.text(alphabet=_chars, min_size=300, max_size=1500),
        st.just("."),
    ),
    max_size=8,
).map("\n".join)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "html", "both"]))
    text = draw(_body) + draw(st.sampled_from(["", "\n", "  \n\n", " \t"]))
    html_body = "<html><body><p>" + draw(_body) + "</p>{{name}}</body></html>"
    return make_row(
        from_name=draw(st.text(alphabet=_chars, max_size=40)),
        subject=draw(st.text(alphabet=_chars, max_size=120)) + " {{name}}",
        personalization={"name": draw(st.text(alphabet=_chars, max_size=20))},
        text_body=None if kind == "html" else text,
        html_body=None if kind == "text" else html_body,
        headers={"X-Note": draw(st.text(alphabet=_chars, max_size=100))},
        settings={"track_opens": draw(st.booleans()), "track_clicks": True},
    )


def rfc2047_display_name(data: bytes) -> str:
    """The From display name decoded as RFC 2047 says: whitespace between adjacent encoded
    words dropped. (policy.default's address parser keeps it, a CPython quirk, so a long
    name split over several words reads back with an extra space there.)"""
    raw = email.message_from_bytes(data, policy=email.policy.compat32)["From"]
    if "<" not in str(raw):
        return ""
    phrase = str(raw).rsplit("<", 1)[0].strip()
    decoded = str(email.header.make_header(email.header.decode_header(phrase)))
    if decoded.startswith('"') and decoded.endswith('"'):
        decoded = re.sub(r"\\(.)", r"\1", decoded[1:-1])
    return decoded


def _squash(text: str) -> str:
    return " ".join(text.split())


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_generated_messages_parse_cleanly_and_verify(row):
    data = compose_bytes(row, CORPUS_KEYS)
    assert_crlf_only(data)
    assert type(data) is WireMessage  # what the client trusts to be CRLF-only, and is
    message = parse(data)
    assert dkimpy.DKIM(data).verify(idx=0, dnsfunc=CORPUS_DNS)
    assert dkimpy.DKIM(data).verify(idx=1, dnsfunc=CORPUS_DNS)
    name = row["personalization"]["name"]
    assert _squash(str(message["Subject"])) == _squash(row["subject"].replace("{{name}}", name))
    assert message["From"].addresses[0].addr_spec == "news@acme.test"
    assert _squash(rfc2047_display_name(data)) == _squash(row["from_name"])
    assert _squash(str(message["X-Note"])) == _squash(row["headers"]["X-Note"])
    if row["text_body"] is not None:
        plain = content(message.get_body(("plain",)))
        expected = row["text_body"].replace("{{name}}", name)
        assert plain == expected + ("" if not expected or expected.endswith("\n") else "\n")


# -- body encoding --------------------------------------------------------------------------

# Bodies that sit on each side of the 7bit / quoted-printable line, and the whitespace and
# line endings DKIM's relaxed canonicalisation rewrites.
AWKWARD_BODIES = {
    "empty": "",
    "one newline": "\n",
    "plain": "Hello John,\nsee you.",
    "998 octets": "a" * 998,
    "999 octets": "a" * 999,
    "999 octets, last line, no newline": "short\n" + "b" * 999,
    "over-long line mid-body": "x\n" * 500 + "c" * 2000 + "\n" + "y\n" * 500,
    "many 998-octet lines": ("d" * 998 + "\n") * 40,
    "trailing whitespace": "end with spaces   \nand a tab\t\n \t \n",
    "inner whitespace runs": "a  b\t\tc \t d\n",
    "empty lines at the end": "body\n\n\n\n",
    "CR, CRLF and LF mixed": "one\rtwo\r\nthree\nfour\r",
    "control character": "bell \x07 here\n",
    "DEL": "rub\x7fout\n",
    "NUL": "nul\x00byte\n",
    "8-bit": "Zoë, naïve café \u2013 😀\n",
    "8-bit over-long line": "é" * 600,
    "dot lines and From": ".\n..\nFrom the start\n.\n",
    "equals signs": "a=b =20 =\n=",
}


def reference_encoding(text: str) -> str:
    """What encode_body must choose, spelled out slowly: 7bit for ASCII without controls
    (tab aside) and no line over 998 octets, else quoted-printable."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    printable = all(ch in "\t\n" or " " <= ch <= "~" for ch in text)
    short = all(len(line) <= 998 for line in text.split("\n"))
    return "7bit" if printable and short else "quoted-printable"


def expected_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text + "\n" if text and not text.endswith("\n") else text


def assert_round_trip(text: str) -> None:
    cte, data = composing.encode_body(text)
    assert cte == reference_encoding(text)
    assert_crlf_only(data)
    if cte == "quoted-printable":
        assert all(len(line) <= 76 for line in data.split(b"\r\n"))
    assert data == b"" or data.endswith(b"\r\n")
    part = parse(
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode()
        + data
    )
    assert content(part) == expected_text(text)


@pytest.mark.parametrize("text", AWKWARD_BODIES.values(), ids=AWKWARD_BODIES.keys())
def test_awkward_bodies_choose_their_encoding_and_decode_to_the_input(text):
    assert_round_trip(text)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
            st.text(alphabet="a \t\r\n", max_size=20),
            st.integers(990, 1010).map(lambda n: "z" * n),
        ),
        max_size=6,
    ).map("".join)
)
def test_any_text_chooses_its_encoding_and_decodes_to_the_input(text):
    assert_round_trip(text)


@pytest.mark.parametrize("text", AWKWARD_BODIES.values(), ids=AWKWARD_BODIES.keys())
def test_awkward_bodies_in_a_signed_message_parse_cleanly_and_verify(text):
    row = make_row(
        text_body=text,
        html_body="<html><body><p>" + text + "</p></body></html>",
        settings={"track_opens": True, "track_clicks": True},
    )
    data = compose_bytes(row, CORPUS_KEYS)
    assert_crlf_only(data)
    message = parse(data)
    assert dkimpy.DKIM(data).verify(idx=0, dnsfunc=CORPUS_DNS)
    assert dkimpy.DKIM(data).verify(idx=1, dnsfunc=CORPUS_DNS)
    assert content(message.get_body(("plain",))) == expected_text(text)
    html_part = content(message.get_body(("html",)))
    assert html_part.startswith("<html><body><p>" + expected_text(text).removesuffix("\n"))


# -- end to end -----------------------------------------------------------------------------


async def test_the_mta_delivers_a_personalised_tracked_signed_message(
    pool, make_settings, smtp_peer, start_worker
):
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}},
        tracker={"base_url": TRACKER},
    )
    async with pool.acquire() as conn:
        await add_domain(
            conn, settings, "acme.test", tenant="acme", selector="pm", algorithm="both"
        )
        records = await show_domain(conn, "acme.test")
    tenant = await ensure_tenant(pool, "acme")
    [queue_id] = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            from_name="Zoë at Acme",
            subject="{Hi|Hello} {{name}}, about {{company | default: 'your team'}}",
            recipients=["john@dest.test"],
            html=(
                "<html><body><p>Dear {{name}} of {{company}},</p>"
                '<p><a href="https://acme.test/offer?ref=1&amp;x=2">See the offer</a></p>'
                "</body></html>"
            ),
            personalization=[{"name": "John", "company": "Initech & Co"}],
            settings={"track_opens": True, "track_clicks": True},
        ),
    )
    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 1)
    await wait_for(lambda: _status(pool, queue_id, "sent"))
    await worker.stop()

    received = smtp_peer.received[0]
    assert Verp.from_settings(settings).decode(received.mail_from) == queue_id
    message = parse(received.data)
    dns = dnsfunc_for(*records)
    assert dkimpy.verify(received.data, dnsfunc=dns)
    assert dkimpy.DKIM(received.data).verify(idx=1, dnsfunc=dns)  # the Ed25519 one too

    assert re.fullmatch(r"(Hi|Hello) John, about Initech & Co", str(message["Subject"]))
    assert message["From"].addresses[0].display_name == "Zoë at Acme"
    row_id = await pool.fetchval("SELECT message_id FROM messages WHERE id = $1", queue_id)
    assert message["Message-ID"] == f"<{row_id}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = Links(LinkSigner(KEYS), TRACKER)
    unsubscribe = re.findall(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))[0]
    assert links.unsubscribe_token(unsubscribe.rsplit("/", 1)[1]) == queue_id

    page = content(message.get_body(("html",)))
    assert "Dear John of Initech &amp; Co," in page
    [click] = re.findall(rf'href="{TRACKER}/c/([^"]+)"', page)
    assert links.click_token(click).url == "https://acme.test/offer?ref=1&x=2"
    # A two-paragraph page is too short to carry the pixel: left out, and the row says why.
    assert f"{TRACKER}/o/" not in page and "<img" not in page
    stored = await pool.fetchval("SELECT settings FROM messages WHERE id = $1", queue_id)
    assert stored["open_pixel"] is False and "image-only" in stored["open_pixel_left_out"]
    text = content(message.get_body(("plain",)))
    assert "Dear John of Initech & Co," in text


async def _status(pool: Any, queue_id: int, status: str) -> bool:
    return await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id) == status


def test_trailing_whitespace_at_the_line_limit_stays_within_76_characters() -> None:
    # binascii.b2a_qp writes this line's final space as =20 at column 74, making it 77 long.
    text = "00\x1f" + "\x80" * 6 + "\u0800" + "\U00010000" * 2 + " "
    cte, data = composing.encode_body(text)
    assert cte == "quoted-printable"
    assert max(len(line) for line in data.split(b"\r\n")) <= 76
    assert_round_trip(text)
