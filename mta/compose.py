"""Turning a queued message row into the signed bytes that go over the wire.

Rendering happens at delivery time from the row, so a retry produces the same message: the
same Message-ID (from the row, never regenerated), the same spintax choices (a hash of it),
the same tracking tokens. Only Date and the signature timestamp move.

The MIME is written here by hand rather than through `email.message`: the hot path needs
it fast (tens of microseconds, not hundreds), and owning every byte means the header list
handed to the DKIM signer is exactly what is sent. Bodies are CRLF-only, so no bare LF or
CR (and no `<LF>.<LF>`) reaches the wire; dot-stuffing stays the transport's job. What is
produced is held to the standard library's parser (no defects) and to dkimpy's verifier.

Choices:
- Tracking is opt-in: the row's `settings` must say `track_opens` / `track_clicks` true.
  Cold mail lands better without pixels and rewritten links, and the issue asks for
  tracking "when the send's settings ask for it"; the API writes its defaults explicitly.
- List-Unsubscribe (one-click https plus mailto) is on every message: bulk senders must.
- A From domain without a sending_domains row (or owned by another tenant) is sent
  unsigned, with one WARNING per domain: mail from a domain nobody has set up yet should
  still flow in a trial setup, and the warning says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import logging
import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

import asyncpg

from mta import dkim
from mta.domains import KeyCache
from penguinmails import template
from penguinmails.config import Settings
from penguinmails.links import Links
from penguinmails.messages import InvalidMessage, address_domain, owned_header
from penguinmails.secrets import server_keys
from penguinmails.tokens import TokenSigner
from penguinmails.verp import Verp

log = logging.getLogger(__name__)

FEEDBACK_SENDER = "penguinmails"
_LINE = 78  # RFC 5322's SHOULD; 998 is the MUST
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PHRASE_ATOMS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")
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

    def to_bytes(self, signatures: Sequence[bytes] = ()) -> bytes:
        head = "".join(f"{n}: {v}\r\n" for n, v in self.headers).encode("ascii")
        return b"".join(signatures) + head + b"\r\n" + self.body


class Composer:
    """Renders queued rows for one MTA process; holds what rendering needs.

    Signing keys come from a KeyCache (one query per domain per TTL); tracking tokens and
    VERP addresses are signed with the server keys, read once here.
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *, key_ttl: float = 60.0) -> None:
        keys = server_keys(settings)
        self.keys = KeyCache(pool, settings, ttl=key_ttl)
        self.links = Links(TokenSigner(keys), settings.tracker.base_url)
        self.verp = Verp(keys, settings.mta.bounce_domain)
        self._unsigned_warned: set[tuple[str, int]] = set()

    async def render(self, row: Mapping[str, Any]) -> tuple[str, bytes]:
        """The envelope sender (VERP) and the signed message bytes; raises ComposeError.

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
        return render_signed(row, keys, links=self.links, verp=self.verp)

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
) -> tuple[str, bytes]:
    """Everything render() does once it has the keys: (VERP sender, signed bytes)."""
    message = compose(row, links=links, verp=verp, now=now)
    signatures = dkim.sign(keys, message.header_bytes(), message.body)
    return verp.encode(row["id"]), message.to_bytes(signatures)


def tracking(settings: Mapping[str, Any] | None) -> tuple[bool, bool]:
    """(opens, clicks): on only when the send asked for it (see the module docstring)."""
    settings = settings or {}
    return settings.get("track_opens") is True, settings.get("track_clicks") is True


def compose(
    row: Mapping[str, Any], *, links: Links, verp: Verp, now: datetime | None = None
) -> Composed:
    """Render one row: templates, tracking, MIME, and the system's headers."""
    try:
        return _compose(row, links=links, verp=verp, now=now)
    except UnicodeError as exc:  # a lone surrogate, say: no bytes can carry it
        raise ComposeError(f"text that cannot be encoded: {exc}") from None


def _compose(row: Mapping[str, Any], *, links: Links, verp: Verp, now: datetime | None) -> Composed:
    queue_id: int = row["id"]
    try:
        from_domain = address_domain(row["from_email"], "from")
        address_domain(row["recipient"], "recipient")
    except InvalidMessage as exc:
        raise ComposeError(str(exc)) from None
    message_id = row["message_id"] or ""
    if not _MESSAGE_ID.match(message_id):
        raise ComposeError(f"not a Message-ID: {message_id!r}")

    unsubscribe_url = links.unsubscribe_url(queue_id)
    values: dict[str, Any] = dict(row["personalization"] or {})
    values["email"] = row["recipient"]
    values["unsubscribe_url"] = unsubscribe_url
    try:
        subject = _render(row["subject"] or "", values, message_id)
        text = (
            _render(row["text_body"], values, message_id) if row["text_body"] is not None else None
        )
        page = (
            _render(row["html_body"], values, message_id, escape=html.escape)
            if row["html_body"] is not None
            else None
        )
    except template.TemplateError as exc:
        raise ComposeError(str(exc)) from None
    if "\r" in subject or "\n" in subject:
        raise ComposeError("subject: a personalised value contains a line break")

    if page is not None:
        if text is None:
            text = _derived_text(row["html_body"], page, values, message_id)
        track_opens, track_clicks = tracking(row["settings"])
        if track_clicks:
            page = rewrite_links(
                page, lambda i, url: links.click_url(queue_id, i, url), keep={unsubscribe_url}
            )
        if track_opens:
            page = add_pixel(page, links.open_url(queue_id))

    headers: list[tuple[str, str]] = [
        ("From", _fold("From", format_address(row["from_name"] or "", row["from_email"]))),
        ("To", row["recipient"]),
        ("Subject", header_value("Subject", subject)),
        ("Date", format_datetime(now or datetime.now(UTC))),
        ("Message-ID", f"<{message_id}>"),
        ("MIME-Version", "1.0"),
    ]
    boundary = "=_pm_" + hashlib.blake2b(message_id.encode(), digest_size=12).hexdigest()
    body = _mime_body(text, page, boundary, headers)
    headers += [
        (
            "List-Unsubscribe",
            f"<{unsubscribe_url}>,\r\n <mailto:{verp.unsubscribe_address(queue_id)}"
            "?subject=unsubscribe>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("Feedback-ID", _feedback_id(row)),
    ]
    headers += _custom_headers(row["headers"] or {})
    return Composed(headers, body, from_domain)


def _render(
    source: str,
    values: Mapping[str, Any],
    seed: str,
    *,
    escape: Callable[[str], str] | None = None,
) -> str:
    return template.compile(source).render(values, seed=seed, escape=escape)


def _derived_text(source: str, page: str, values: Mapping[str, Any], seed: str) -> str:
    """The text part of an html-only send: from a text template derived from the html
    template once per campaign (values then go in unescaped, spintax picks as in the html),
    or, when that derivation is not itself a valid template, from this rendered page.
    """
    derived = _text_template(source)
    if derived is None:
        return html_to_text(page)
    try:
        return derived.render(values, seed=seed)
    except template.TemplateError:
        return html_to_text(page)


@lru_cache(maxsize=512)
def _text_template(html_source: str) -> template.Template | None:
    try:
        return template.Template(html_to_text(html_source))
    except template.TemplateError:
        return None


def _feedback_id(row: Mapping[str, Any]) -> str:
    """Gmail's Feedback Loop groups complaints by these fields: campaign, tenant, kind."""
    campaign = row["campaign_id"]
    kind = "campaign" if campaign is not None else "send"
    return f"{campaign or 0}:{row['tenant_id']}:{kind}:{FEEDBACK_SENDER}"


def _custom_headers(custom: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, raw in custom.items():
        if owned_header(name):
            continue  # the API refuses these; a row that has them anyway loses them
        if not _HEADER_NAME.match(name):
            raise ComposeError(f"headers: not a header name: {name!r}")
        value = str(raw)
        if "\r" in value or "\n" in value:
            raise ComposeError(f"headers.{name}: contains CR or LF (header injection)")
        out.append((name, header_value(name, value)))
    return out


# -- MIME -----------------------------------------------------------------------------------


def _mime_body(
    text: str | None, page: str | None, boundary: str, headers: list[tuple[str, str]]
) -> bytes:
    """The body; appends the top-level Content-Type (and encoding) to `headers`."""
    if page is None:
        cte, data = encode_body(text or "")
        headers.append(("Content-Type", 'text/plain; charset="utf-8"'))
        headers.append(("Content-Transfer-Encoding", cte))
        return data
    parts = [("plain", encode_body(text or "")), ("html", encode_body(page))]
    while any(boundary.encode() in data for _, (_, data) in parts):
        boundary += "_"  # a 7bit part could, in theory, contain it
    headers.append(("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"'))
    out = []
    for subtype, (cte, data) in parts:
        out.append(
            f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii")
        )
        out.append(data)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, CRLF-only bytes ending in CRLF unless empty): 7bit when
    it can be, else quoted-printable, which keeps UTF-8 readable and lines under 77.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    if text.isascii() and not _BODY_CONTROL.search(text):
        raw = text.encode("ascii")
        if max(len(line) for line in raw.split(b"\n")) <= 998:
            return "7bit", raw.replace(b"\n", b"\r\n")
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


# -- headers --------------------------------------------------------------------------------


def header_value(name: str, value: str) -> str:
    """A header value ready for the wire: folded ASCII, or RFC 2047 encoded words."""
    if _CONTROL.search(value.replace("\t", " ")):
        raise ComposeError(f"{name}: control characters are not allowed")
    if value.isascii():
        folded = _fold(name, value)
        if max(len(line) for line in folded.split("\r\n")) <= 998 - len(name) - 2:
            return folded
    return "\r\n ".join(encoded_words(value))


def format_address(name: str, address: str) -> str:
    """`Display Name <addr>`: atoms as they are, else a quoted string, else encoded words."""
    if not name:
        return address
    if _CONTROL.search(name.replace("\t", " ")):
        raise ComposeError("from_name: control characters are not allowed")
    if not name.isascii():
        phrase = " ".join(encoded_words(name))
    elif _PHRASE_ATOMS.match(name) and name == name.strip() and "  " not in name:
        phrase = name
    else:
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{phrase} <{address}>"


def encoded_words(value: str) -> list[str]:
    """`=?utf-8?b?...?=` words of at most 75 characters, never splitting a character."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in value:
        n = len(ch.encode("utf-8"))
        if size + n > 45:  # 45 bytes -> 60 base64 characters + 12 of framing
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk or not words:
        words.append("".join(chunk))
    return [f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words]


def _fold(name: str, value: str) -> str:
    """Fold at spaces so lines stay near 78 characters; unfolding gives back `value`."""
    if len(name) + 2 + len(value) <= _LINE:
        return value
    lines: list[str] = []
    words = value.split(" ")
    current = words[0]
    room = _LINE - len(name) - 2
    for word in words[1:]:
        if len(current) + 1 + len(word) > room and word and current.strip(" \t"):
            lines.append(current)
            current = word
            room = _LINE - 1
        else:
            current += " " + word
    lines.append(current)
    return "\r\n ".join(lines)


# -- tracking and the derived text part -----------------------------------------------------

_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(
    r"""(?<![\w-])(href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'<>`]+))""", re.IGNORECASE
)
_NOTRACK = re.compile(r"(?<![\w-])data-pm-notrack(?![\w-])", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def rewrite_links(
    page: str, click_url: Callable[[int, str], str], *, keep: Set[str] = frozenset()
) -> str:
    """Every http(s) link through the tracker; `click_url(index, url)` makes the new URL.

    The index counts rewritten links from 0 in document order. Links marked
    `data-pm-notrack`, mailto: and other schemes, and the URLs in `keep` (the message's own
    unsubscribe link: a click redirect in front of it would only slow it down) are left
    as they are.
    """
    index = 0

    def tag(match: re.Match[str]) -> str:
        nonlocal index
        parsed = _trackable(match.group(0))
        if parsed is None or parsed[1] in keep:
            return match.group(0)
        before, url, after = parsed
        new = click_url(index, url)
        index += 1
        if "&" in new or '"' in new:  # only a strange tracker base_url would need it
            new = html.escape(new)
        return f'{before}"{new}"{after}'

    return _A_TAG.sub(tag, page)


@lru_cache(maxsize=4096)
def _trackable(tag: str) -> tuple[str, str, str] | None:
    """(text before the href value, the URL, text after) for a link to track, else None.

    Cached: a campaign's links are the same tags for every recipient.
    """
    if _NOTRACK.search(tag):
        return None
    href = _HREF.search(tag)
    if href is None:
        return None
    raw = next(g for g in href.groups()[1:] if g is not None)
    url = html.unescape(raw).strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    if _CONTROL.search(url):  # cannot go into a signed token; the API refuses such links
        return None
    return tag[: href.start()] + href.group(1), url, tag[href.end() :]


def add_pixel(page: str, url: str) -> str:
    """The open pixel, just before the last </body> (at the end when there is none)."""
    pixel = (
        f'<img src="{html.escape(url)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px" />'
    )
    ends = list(_BODY_END.finditer(page))
    if not ends:
        return page + pixel
    at = ends[-1].start()
    return page[:at] + pixel + page[at:]


_DROP = re.compile(r"<(head|style|script|title)\b.*?</\1\s*>|<!--.*?-->", re.I | re.DOTALL)
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)")
_TAG = re.compile(r"<[^>]*>")
_BLOCKS = frozenset(
    "p div h1 h2 h3 h4 h5 h6 li tr table blockquote ul ol section article header footer".split()
)


def html_to_text(page: str) -> str:
    """A readable plain-text alternative for html-only sends; links as `text (url)`.

    One pass over the tags with string methods for the rest: this runs per message, and a
    chain of regular-expression passes over the whole page cost several times as much.
    """
    page = _DROP.sub("", page)
    out: list[str] = []
    link_url: str | None = None
    link_start = pos = 0
    for match in _TAG.finditer(page):
        if match.start() > pos:
            out.append(page[pos : match.start()].replace("\r", " ").replace("\n", " "))
        pos = match.end()
        tag = match.group()
        name_match = _TAG_NAME.match(tag)
        if name_match is None:
            continue
        name = name_match.group(1).lower()
        closing = tag[1] == "/"
        if name == "a":
            if not closing:
                href = _HREF.search(tag)
                link_url = next(g for g in href.groups()[1:] if g is not None) if href else None
                link_start = len(out)
            elif link_url is not None:
                label = " ".join("".join(out[link_start:]).split())
                url = link_url.strip()
                if url and not url.lower().startswith("mailto:"):
                    if html.unescape(label) != html.unescape(url):
                        out.append(f" ({url})" if label else url)
                link_url = None
        elif name == "br":
            out.append("\n")
        elif closing and name in _BLOCKS:
            out.append("\n\n")
        elif name == "li":
            out.append("\n- ")
    out.append(page[pos:].replace("\r", " ").replace("\n", " "))
    text = "".join(out)
    if "&" in text:
        text = html.unescape(text)
    lines: list[str] = []
    for raw in text.split("\n"):
        line = " ".join(raw.split())
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
