"""Reading mail that comes back: the parts of a report, header fields, returned headers.

Shared by the DSN, ARF and reply readers. Everything here is written for hostile and broken
input (bounces are produced by every MTA ever written, some of them badly): it returns
empty values rather than raising, and it never descends into the returned message beyond
its headers.

Parsing uses the standard library's `compat32` policy: it keeps malformed headers as plain
strings instead of raising on access, which is what a bounce reader needs.
"""

from __future__ import annotations

import base64
import binascii
import email
import re
from collections.abc import Iterator
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

# Parts whose payload the parser turns into header blocks: read as fields, not walked into.
REPORT_PARTS = frozenset({"message/delivery-status", "message/feedback-report"})
RETURNED_PARTS = frozenset({"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"})
_ANGLE_ID = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:(.*)$")
# Where a plain-text bounce starts quoting the message it returns (qmail, Exim, Yahoo's
# legacy format, sendmail, Lotus Domino, a few hand-rolled ones).
_INLINE_MARKER = re.compile(
    r"^[ \t>]*-*[ \t]*(below this line is a copy of the message"
    r"|this is a copy of the message"
    r"|this is a copy of the headers"
    r"|original message follows"
    r"|returned message follows"
    r"|original message headers"
    r"|the original message was"
    r"|the header of the original message is following"
    r"|-+ ?original message ?-+)[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=policy.compat32)


def header_text(message: Message, name: str) -> str:
    """A header's value as text: RFC 2047 decoded, unfolded; '' when absent or undecodable."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, binascii.Error, ValueError):
        text = str(value)
    # An encoded-word can carry a NUL the raw message did not show.
    return " ".join(text.replace("\0", "").split())


def address(value: str) -> str:
    """The addr-spec of one address field (`"A" <a@b>` -> `a@b`), '' when there is none."""
    _name, addr = parseaddr(value)
    return addr.strip().strip("<>")


def addresses(message: Message, name: str) -> list[str]:
    values = [str(v) for v in message.get_all(name, [])]
    return [a.strip("<> ") for _n, a in getaddresses(values) if a]


def angle_ids(value: str) -> list[str]:
    """Message-IDs in a header value (`<a@b> <c@d>`), brackets removed, in order."""
    return _ANGLE_ID.findall(value)


def parts(message: Message) -> Iterator[Message]:
    """Every part, depth first, not descending into report blocks or returned messages."""
    yield message
    if message.get_content_type() in REPORT_PARTS | RETURNED_PARTS:
        return
    payload = message.get_payload()
    if message.is_multipart() and isinstance(payload, list):
        for child in payload:
            if isinstance(child, Message):
                yield from parts(child)


def find_part(message: Message, *content_types: str) -> Message | None:
    for part in parts(message):
        if part.get_content_type() in content_types:
            return part
    return None


def part_text(part: Message) -> str:
    """The text of a part, whatever the parser made of it and however it was encoded; NULs
    that the transfer encoding hid are left out, as in headers."""
    return _part_text(part).replace("\0", "")


def _part_text(part: Message) -> str:
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list):
        # message/* parts arrive parsed into blocks; put the text back together.
        text = "\n".join(
            p.as_string(maxheaderlen=0) if isinstance(p, Message) else str(p) for p in payload
        )
        if encoding == "base64":
            try:
                return base64.b64decode("".join(text.split())).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                return text
        return text
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return str(payload or "")
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def parse_fields(text: str) -> list[dict[str, str]]:
    """Header-style field blocks separated by blank lines (RFC 3464, RFC 5965).

    Names are lower-cased; a repeated field keeps its first value; continuation lines are
    unfolded. Lines that are not fields are skipped rather than ending the block.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            current[last] = f"{current[last]} {line.strip()}".strip()
            continue
        match = _FIELD.match(line)
        if match is None:
            last = None
            continue
        name = match.group(1).lower()
        last = name if name not in current else None
        if last is not None:
            current[name] = match.group(2).strip()
    if current:
        blocks.append(current)
    return blocks


def returned_headers(message: Message) -> Message | None:
    """The headers of the message a report returns (message/rfc822 or text/rfc822-headers)."""
    for part in parts(message):
        if part is message:
            continue
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner: Message = payload[0]
                return inner
            return _headers_of(part_text(part))
        if kind in ("text/rfc822-headers", "message/rfc822-headers"):
            return _headers_of(part_text(part))
    return None


def inline_returned(text: str) -> tuple[str, Message | None]:
    """Split a plain-text bounce into its explanation and the headers it quotes, if any."""
    match = _INLINE_MARKER.search(text)
    if match is None:
        return text, None
    quoted = text[match.end() :].lstrip("\r\n")
    quoted = "\n".join(line[2:] if line.startswith("> ") else line for line in quoted.split("\n"))
    headers = _headers_of(quoted.lstrip())
    return text[: match.start()], headers if len(headers) else None


def _headers_of(text: str) -> Message:
    return HeaderParser(policy=policy.compat32).parsestr(text, headersonly=True)


def body_text(message: Message, limit: int = 200_000) -> str:
    """The first text/plain part's text (or the first text/* part's), at most `limit` chars."""
    fallback: Message | None = None
    for part in parts(message):
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_type() == "text/plain":
            return part_text(part)[:limit]
        if fallback is None and part.get_content_type() != "text/rfc822-headers":
            fallback = part
    return part_text(fallback)[:limit] if fallback is not None else ""
