"""A reply kept whole: the fields, bodies and attachments the tenant reads through the API.

`read_mail(raw)` is for mail already classified as a reply or an automatic reply. Like the
rest of inbound it never raises on broken input: a part it cannot decode keeps what it can
(an attachment whose base64 is broken is stored as the parser's best effort). Values here
are not yet made storable (NUL, lone surrogates): inbound.server does that, as for every
value it writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from inbound.parse import RETURNED_PARTS, address, addresses, header_text, parse, part_text, parts


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes

    def metadata(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": len(self.content),
            "sha256": hashlib.sha256(self.content).hexdigest(),
        }


@dataclass(frozen=True)
class WholeMail:
    from_email: str
    to: list[str]
    cc: list[str]
    subject: str
    text: str | None
    html: str | None
    headers: list[tuple[str, str]]
    raw: bytes
    attachments: list[Attachment] = field(default_factory=list)


def read_mail(raw: bytes) -> WholeMail:
    # NUL has no place in mail: read past it, as classify does (the raw bytes keep it).
    message = parse(raw.replace(b"\0", b""))
    text = html = None
    attachments: list[Attachment] = []
    for part in parts(message):
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if not _is_attachment(part, kind):
            if kind == "text/plain" and text is None:
                text = part_text(part)
                continue
            if kind == "text/html" and html is None:
                html = part_text(part)
                continue
        attachments.append(Attachment(_filename(part, kind), kind, _content(part)))
    return WholeMail(
        from_email=address(header_text(message, "From")),
        to=addresses(message, "To"),
        cc=addresses(message, "Cc"),
        subject=header_text(message, "Subject"),
        text=text,
        html=html,
        headers=[(name, _header_value(value)) for name, value in message.items()],
        raw=raw,
        attachments=attachments,
    )


def _is_attachment(part: Message, kind: str) -> bool:
    """A part the reader downloads rather than reads: declared so, named, or not text."""
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    if disposition == "attachment" or part.get_filename() is not None:
        return True
    return kind not in ("text/plain", "text/html")


def _filename(part: Message, kind: str) -> str:
    try:
        name = part.get_filename()
    except (LookupError, UnicodeError, ValueError):
        name = None
    if name:
        # A name is shown and used as a download's name: no path, no line breaks.
        name = " ".join(str(name).replace("\\", "/").rsplit("/", 1)[-1].split())
    if name:
        return name[:255]
    return "message.eml" if kind in RETURNED_PARTS else "attachment"


def _content(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):
        # A forwarded message (message/rfc822) arrives parsed: put its bytes back together.
        try:
            return b"".join(
                p.as_bytes() if isinstance(p, Message) else str(p).encode() for p in payload
            )
        except (LookupError, UnicodeError, ValueError):
            return part_text(part).encode("utf-8", "replace")
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    return str(payload or "").encode("utf-8", "surrogateescape")


def _header_value(value: Any) -> str:
    """Decoded (RFC 2047) and unfolded, as the API shows it (the raw mail keeps it as sent)."""
    holder = Message()
    holder["X"] = str(value)
    return header_text(holder, "X")
