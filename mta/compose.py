"""Turning a queued message row into the signed bytes that go over the wire.

Rendering happens at delivery time from the row, so a retry produces the same message: the
same Message-ID (from the row, never regenerated), the same spintax choices (a hash of it),
the same tracking tokens. Only Date and the signature timestamp move.

The MIME is written here by hand rather than through `email.message`: the hot path needs
it fast (tens of microseconds, not hundreds), and owning every byte means the header list
handed to the DKIM signer is exactly what is sent. Bodies are CRLF-only, so no bare LF or
CR (and no `<LF>.<LF>`) reaches the wire; dot-stuffing stays the transport's job. What is
produced is held to the standard library's parser (no defects) and to dkimpy's verifier.

The parts live beside this module: header encoding in mta.headers, open and click
tracking in mta.tracking (opt-in: the send's settings must ask for it); the text part of
an html-only send comes from penguinmails.html_text (the API's template preview derives it
the same way). This module puts them together.

Speed: every body goes through several whole-body steps (rendering, tracking, transfer
encoding, DKIM canonicalisation and hashing), so each step is a C method over the whole
body (str.join, replace, encode, translate + isascii, rfind, binascii's quoted-printable and
base64, hashlib), never a Python loop over its lines. What is the same for every recipient
of a campaign is done once and cached where it is made: parsed templates
(penguinmails.template.compile, keyed by the source), the text template derived from an
html one (penguinmails.html_text), the parse of each link tag (mta.tracking), the base64 of
each attachment (encode_attachment, below), the parsed DKIM keys (mta.domains.KeyCache) and
the per-purpose token keys (penguinmails.tokens). Left per recipient: the personalised text
itself, its tokens, and the RSA signature, the floor that benchmarks/compose.py measures
compose and signing against.

Choices:
- List-Unsubscribe (one-click https plus mailto) is on every message: bulk senders must.
- A From domain without a sending_domains row (or owned by another tenant) is sent
  unsigned, with one WARNING per domain: mail from a domain nobody has set up yet should
  still flow in a trial setup, and the warning says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import html
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import quoprimime
from email.utils import format_datetime
from typing import Any

import asyncpg

from mta import dkim
from mta.client import WireMessage
from mta.domains import KeyCache
from mta.headers import HeaderError, fold, format_address, header_value
from mta.tracking import (
    add_pixel,
    pixel_fits,
    plain_text_requested,
    rewrite_links,
    tracking_requested,
)
from penguinmails import template
from penguinmails.config import Settings
from penguinmails.html_text import derived_text
from penguinmails.links import Links
from penguinmails.messages import InvalidMessage, address_domain, owned_header
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from penguinmails.verp import Verp

log = logging.getLogger(__name__)

FEEDBACK_SENDER = "penguinmails"
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_MESSAGE_ID = re.compile(r"^[!-;=?-~]+@[!-;=?-~]+$")


class ComposeError(Exception):
    """The row cannot be made into a valid message; it fails instead of being retried."""


@dataclass(frozen=True, slots=True)
class Composed:
    """A rendered message: header fields in order, and the body exactly as it is sent."""

    headers: list[tuple[str, str]]  # (name, folded value without the leading space)
    body: bytes
    from_domain: str

    def header_bytes(self) -> list[tuple[bytes, bytes]]:
        return [(n.encode("ascii"), b" " + v.encode("ascii")) for n, v in self.headers]

    def to_bytes(self, signatures: Sequence[bytes] = ()) -> WireMessage:
        head = "".join(f"{n}: {v}\r\n" for n, v in self.headers).encode("ascii")
        return WireMessage(b"".join([*signatures, head, b"\r\n", self.body]))


class Composer:
    """Renders queued rows for one MTA process; holds what rendering needs.

    Signing keys come from a KeyCache (one query per domain per TTL); tracking tokens and
    VERP addresses are signed with the server keys, read once here.
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, key_ttl: float = 60.0) -> None:
        keys = server_keys(settings)
        self._server_keys = keys
        self.keys = KeyCache(pool, settings, ttl=key_ttl)
        self.links = Links(LinkSigner(keys), settings.tracker.base_url)
        self.verp = Verp(keys, settings.mta.bounce_domain)
        # A verified sending domain's own return path and tracking host (KeyCache.aligned_for),
        # one signer each, made on first use: SPF then aligns with the From domain, and each
        # domain's links carry its own name's reputation.
        self._verps: dict[str, Verp] = {}
        self._links: dict[str, Links] = {}
        self._unsigned_warned: set[tuple[str, int]] = set()

    async def render(
        self, row: Mapping[str, Any], attachments: Mapping[int, bytes] | None = None
    ) -> tuple[str, bytes]:
        """The envelope sender (VERP) and the signed message bytes; raises ComposeError.
        `attachments`: the bytes of the row's attachments by id (mta.queue.attachment_contents).

        mta.domains.KeyUnavailable (keys exist but cannot be read now) propagates: the
        message is not at fault and must not be failed.
        """
        try:
            domain = address_domain(row["from_email"], "from")
        except InvalidMessage as exc:
            raise ComposeError(str(exc)) from None
        keys = await self.keys.keys_for(domain, row["tenant_id"])
        if not keys:
            self._warn_unsigned(domain, row["tenant_id"])
        aligned = await self.keys.aligned_for(domain, row["tenant_id"])
        verp, links = self.verp, self.links
        if aligned.return_path is not None:
            verp = self._verps.get(aligned.return_path) or self._verps.setdefault(
                aligned.return_path, Verp(self._server_keys, aligned.return_path)
            )
        if aligned.tracking is not None:
            links = self._links.get(aligned.tracking) or self._links.setdefault(
                aligned.tracking,
                Links(LinkSigner(self._server_keys), f"https://{aligned.tracking}"),
            )
        return render_signed(row, keys, links=links, verp=verp, attachments=attachments)

    def _warn_unsigned(self, domain: str, tenant_id: int) -> None:
        if (domain, tenant_id) in self._unsigned_warned:
            return
        self._unsigned_warned.add((domain, tenant_id))
        log.warning(
            "no DKIM key for this From domain; sending unsigned",
            extra={
                "action": "dkim_unsigned",
                "domain": domain,
                "tenant": tenant_id,
                "fix": f"penguinmails domains add {domain} --tenant NAME",
            },
        )


# -- the message ----------------------------------------------------------------------------


def render_signed(
    row: Mapping[str, Any],
    keys: Sequence[dkim.DkimKey],
    *,
    links: Links,
    verp: Verp,
    now: datetime | None = None,
    attachments: Mapping[int, bytes] | None = None,
) -> tuple[str, bytes]:
    """Everything render() does once it has the keys: (VERP sender, signed bytes)."""
    message = compose(row, links=links, verp=verp, now=now, attachments=attachments)
    signatures = dkim.sign(keys, message.header_bytes(), message.body)
    return verp.encode(row["id"]), message.to_bytes(signatures)


def compose(
    row: Mapping[str, Any],
    *,
    links: Links,
    verp: Verp,
    now: datetime | None = None,
    attachments: Mapping[int, bytes] | None = None,
) -> Composed:
    """Render one row: templates, tracking, MIME, and the system's headers."""
    try:
        files = _files(row.get("attachments"), attachments or {})
        return _compose(row, links=links, verp=verp, now=now, files=files)
    except UnicodeError as exc:  # a lone surrogate, say: no bytes can carry it
        raise ComposeError(f"text that cannot be encoded: {exc}") from None
    except HeaderError as exc:
        raise ComposeError(str(exc)) from None


def _compose(
    row: Mapping[str, Any],
    *,
    links: Links,
    verp: Verp,
    now: datetime | None,
    files: Sequence[_File] = (),
) -> Composed:
    queue_id: int = row["id"]
    try:
        from_domain = address_domain(row["from_email"], "from")
        address_domain(row["recipient"], "recipient")
    except InvalidMessage as exc:
        raise ComposeError(str(exc)) from None
    rfc_message_id = row["message_id"] or ""
    if not _MESSAGE_ID.match(rfc_message_id):
        raise ComposeError(f"not a Message-ID: {rfc_message_id!r}")

    unsubscribe_url = links.unsubscribe_url(queue_id)
    values: dict[str, Any] = dict(row["personalization"] or {})
    values["email"] = row["recipient"]
    values["unsubscribe_url"] = unsubscribe_url
    try:
        subject = _render(row["subject"] or "", values, rfc_message_id)
        text = (
            _render(row["text_body"], values, rfc_message_id)
            if row["text_body"] is not None
            else None
        )
        page = (
            _render(row["html_body"], values, rfc_message_id, escape=html.escape)
            if row["html_body"] is not None
            else None
        )
    except template.TemplateError as exc:
        raise ComposeError(str(exc)) from None
    if "\r" in subject or "\n" in subject:
        raise ComposeError("subject: a personalised value contains a line break")

    if page is not None:
        if text is None:
            text = derived_text(row["html_body"], page, values, rfc_message_id)
        if plain_text_requested(row["settings"]):
            page = None  # the text part alone: no html, so no pixel and no tracked links
    if page is not None:
        track_opens, track_clicks = tracking_requested(row["settings"])
        if track_clicks:
            page = rewrite_links(
                page, lambda i, url: links.click_url(queue_id, i, url), keep={unsubscribe_url}
            )
        if track_opens and pixel_fits(row["settings"], page):
            page = add_pixel(page, links.open_url(queue_id))

    headers: list[tuple[str, str]] = [
        ("From", fold("From", format_address(row["from_name"] or "", row["from_email"]))),
        ("To", _address_list("To", row.get("to_header")) or row["recipient"]),
    ]
    cc = _address_list("Cc", row.get("cc_header"))
    if cc:
        headers.append(("Cc", cc))
    reply_to = _address_list("Reply-To", row.get("reply_to"))
    if reply_to:
        headers.append(("Reply-To", reply_to))
    # No Bcc header, ever: a Bcc recipient's row is the same message, and nobody else's copy
    # (nor its own) may show it.
    headers += [
        ("Subject", header_value("Subject", subject)),
        ("Date", format_datetime(now) if now is not None else _date_now(int(time.time()))),
        ("Message-ID", f"<{rfc_message_id}>"),
        ("MIME-Version", "1.0"),
    ]
    boundary = "=_pm_" + hashlib.blake2b(rfc_message_id.encode(), digest_size=12).hexdigest()
    body = _mime_body(text, page, boundary, headers, files)
    headers += [
        (
            "List-Unsubscribe",
            f"<{unsubscribe_url}>,\r\n <mailto:{verp.unsubscribe_address(queue_id)}"
            "?subject=unsubscribe>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("Feedback-ID", _feedback_id(row)),
    ]
    headers += _custom_headers(row["headers"] or {}, skip=("reply-to",) if reply_to else ())
    return Composed(headers, body, from_domain)


@functools.lru_cache(maxsize=2)
def _date_now(second: int) -> str:
    """The Date header for this second: every message composed in it shares one."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def _address_list(name: str, addresses: Sequence[Mapping[str, str]] | None) -> str:
    """A folded address-list header value ("" for none); checks each address again, since
    the row is what goes on the wire."""
    if not addresses:
        return ""
    out = []
    for entry in addresses:
        try:
            address_domain(entry["email"], name)
        except InvalidMessage as exc:
            raise ComposeError(str(exc)) from None
        out.append(format_address(entry.get("name") or "", entry["email"]))
    return fold(name, ", ".join(out))


def _render(
    source: str,
    values: Mapping[str, Any],
    seed: str,
    *,
    escape: Callable[[str], str] | None = None,
) -> str:
    return template.compile(source).render(values, seed=seed, escape=escape)


def _feedback_id(row: Mapping[str, Any]) -> str:
    """Gmail's Feedback Loop groups complaints by these fields: campaign, tenant, kind."""
    campaign = row["campaign_id"]
    kind = "campaign" if campaign is not None else "send"
    return f"{campaign or 0}:{row['tenant_id']}:{kind}:{FEEDBACK_SENDER}"


def _custom_headers(custom: Mapping[str, Any], skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    out = []
    for name, raw in custom.items():
        if owned_header(name) or name.lower() in skip:
            continue  # the API refuses these; a row that has them anyway loses them
        if not _HEADER_NAME.match(name):
            raise ComposeError(f"headers: not a header name: {name!r}")
        value = str(raw)
        if "\r" in value or "\n" in value:
            raise ComposeError(f"headers.{name}: contains CR or LF (header injection)")
        out.append((name, header_value(name, value)))
    return out


# -- MIME -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """A MIME entity: its Content-* fields (the first is Content-Type) and its body."""

    fields: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class _File:
    filename: str
    content_type: str
    inline: bool
    content_id: str | None
    content: bytes = field(repr=False)


def _files(refs: Sequence[Mapping[str, Any]] | None, contents: Mapping[int, bytes]) -> list[_File]:
    """The row's attachments with their bytes; one whose bytes are absent fails the message
    (sending it without would be a different message than the one accepted)."""
    files = []
    for ref in refs or ():
        content = contents.get(ref["id"])
        if content is None:
            raise ComposeError(f"attachment {ref['id']} ({ref['filename']!r}) is missing")
        files.append(
            _File(
                ref["filename"],
                ref["content_type"],
                ref["disposition"] == "inline",
                ref.get("content_id"),
                bytes(content),
            )
        )
    return files


def _mime_body(
    text: str | None,
    page: str | None,
    boundary: str,
    headers: list[tuple[str, str]],
    files: Sequence[_File] = (),
) -> bytes:
    """The body; appends the top-level Content-Type (and encoding) to `headers`.

    The shape mail clients expect: multipart/mixed (when there are attachments) around
    multipart/alternative (text, and html), the html inside multipart/related with the inline
    parts its `cid:` links show. Inline parts without an html part to show them in are plain
    attachments. Nested boundaries extend the top one (`_r`, `_m`), so one check covers all.
    """
    plain = encode_body(text or "")
    if page is None and not files:
        headers.append(("Content-Type", 'text/plain; charset="utf-8"'))
        headers.append(("Content-Transfer-Encoding", plain[0]))
        return plain[1]
    texts = [plain] + ([encode_body(page)] if page is not None else [])
    while any(boundary.encode() in data for _, data in texts):
        boundary += "_"  # a 7bit part could, in theory, contain it (base64 never: no "_")
    top = _text_part("plain", texts[0])
    if page is not None:
        html_part = _text_part("html", texts[1])
        inline = [_file_part(f) for f in files if f.inline]
        if inline:
            html_part = _multipart("related", boundary + "_r", [html_part, *inline])
        top = _multipart("alternative", boundary, [top, html_part])
    attached = [_file_part(f) for f in files if page is None or not f.inline]
    if attached:
        top = _multipart("mixed", boundary + "_m", [top, *attached])
    headers.extend(top.fields)
    return top.body


def _text_part(subtype: str, encoded: tuple[str, bytes]) -> _Part:
    cte, data = encoded
    return _Part(
        [("Content-Type", f'text/{subtype}; charset="utf-8"'), ("Content-Transfer-Encoding", cte)],
        data,
    )


def _multipart(subtype: str, boundary: str, parts: Sequence[_Part]) -> _Part:
    out = []
    for part in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in part.fields)
        out.append(f"--{boundary}\r\n{head}\r\n".encode("ascii"))
        out.append(part.body)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return _Part(
        [("Content-Type", f'multipart/{subtype};\r\n boundary="{boundary}"')], b"".join(out)
    )


def _file_part(file: _File) -> _Part:
    disposition = "inline" if file.inline else "attachment"
    fields = [
        ("Content-Type", f"{file.content_type};\r\n {mime_parameter('name', file.filename)}"),
        (
            "Content-Disposition",
            f"{disposition};\r\n {mime_parameter('filename', file.filename)}",
        ),
        ("Content-Transfer-Encoding", "base64"),
    ]
    if file.content_id is not None:
        fields.append(("Content-ID", f"<{file.content_id}>"))
    return _Part(fields, encode_attachment(file.content))


@functools.lru_cache(maxsize=4)
def encode_attachment(content: bytes) -> bytes:
    """base64 in lines of 76 (encodebytes: C speed), CRLF for the wire.

    Cached: a claimed batch's messages share one bytes object per attachment (loaded once,
    mta.queue.attachment_contents), so a campaign's 5 MB file is encoded once, not once per
    recipient. The key's hash is cached on the bytes object and equality starts with
    identity, so a hit costs nothing; four entries bound the memory to 4 x 13.7 MB at most.
    """
    return base64.encodebytes(content).replace(b"\n", b"\r\n")


# RFC 2231 attribute-char: what may stand unescaped in an extended parameter value.
_ATTR_SAFE = "!#$&+-.^_`|~"
_QUOTABLE = re.compile(r"^[ !#-\[\]-~]*$")  # printable ASCII but `"` and `\`
_RFC2231_CHUNK = 60


def mime_parameter(name: str, value: str) -> str:
    """`name="value"` for plain ASCII; else RFC 2231 (`name*=utf-8\'\'%..`), split into
    numbered continuations (`name*0*=`, `name*1*=`, one per folded line) when long."""
    if _QUOTABLE.match(value) and len(value) <= 200:
        return f'{name}="{value}"'
    encoded = urllib.parse.quote(value.encode("utf-8"), safe=_ATTR_SAFE)
    if len(encoded) <= _RFC2231_CHUNK:
        return f"{name}*=utf-8''{encoded}"
    chunks = []
    while encoded:
        cut = min(_RFC2231_CHUNK, len(encoded))
        # never split a %XX escape
        pct = encoded.rfind("%", max(0, cut - 2), cut)
        if pct != -1 and cut < len(encoded):
            cut = pct
        chunks.append(encoded[:cut])
        encoded = encoded[cut:]
    first = f"{name}*0*=utf-8''{chunks[0]}"
    rest = [f"{name}*{i}*={chunk}" for i, chunk in enumerate(chunks[1:], 1)]
    return ";\r\n ".join([first, *rest])


# Each byte that rules 7bit out (controls but tab and LF, and DEL) mapped to one that is not
# ASCII, so one translate and one isascii() answer "ASCII without controls" in two C passes.
_NOT_7BIT = bytes(
    0x80 if (byte < 0x20 and byte not in (0x09, 0x0A)) or byte == 0x7F else byte
    for byte in range(256)
)
_MAX_LINE = 998  # RFC 5322: octets on a line, CRLF not counted


def encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, CRLF-only bytes ending in CRLF unless empty): 7bit when
    it can be, else quoted-printable, which keeps UTF-8 readable and lines under 77.

    7bit when the text is ASCII without control characters (tab aside) and no line is longer
    than 998 octets. Each pass is a C method over the whole body (replace, encode, translate,
    isascii, rfind, b2a_qp), never a Python loop over its lines: at 100 KB this runs twice a
    message (text and html).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = text.encode("utf-8")
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    if raw.translate(_NOT_7BIT).isascii() and not _has_long_line(raw):
        return "7bit", raw.replace(b"\n", b"\r\n")
    encoded = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)
    if _OVER_LONG_QP.search(encoded):
        # binascii can end a line at 77 characters when it writes trailing whitespace as =20
        # at the limit (RFC 2045 allows 76). Rare: the email package's encoder, in Python,
        # keeps to 76; it reads a str of one character per byte.
        encoded = quoprimime.body_encode(raw.decode("latin-1"), eol="\n").encode("ascii")
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


_OVER_LONG_QP = re.compile(rb"[^\n]{77}")


def _has_long_line(data: bytes) -> bool:
    """Whether an LF-separated line is longer than 998 octets.

    Jumps to the last LF within the next 999 octets each time, so the loop runs about once
    per kilobyte rather than once per line, and not at all for a short body.
    """
    size = len(data)
    start = 0
    while size - start > _MAX_LINE:
        newline = data.rfind(b"\n", start, start + _MAX_LINE + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False
