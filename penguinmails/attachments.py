"""Attachments of a send: decoding, the checks every one passes, and storing the bytes once.

Checked here, where every way in (API, CLI) passes, so the MTA only ever sees attachments
it can write: a bounded size and count, a filename a MIME parameter can carry and a file
system cannot misread, a content type that is plausibly what the bytes are, and no
executables unless the account allows them.

The bytes are stored once per tenant and sha256 (table `attachments`); each message row
names the ones it carries (`messages.attachments`), so a send to many recipients shares
them. Storing happens in the transaction that queues the messages (see messages.enqueue).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from penguinmails.messages import InvalidMessage
from penguinmails.queries import load

SQL = load("penguinmails", "sql/queries.sql")

MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # decoded, per attachment
MAX_MESSAGE_ATTACHMENT_BYTES = 25 * 1024 * 1024  # decoded, all of a message's together
MAX_FILENAME_CHARS = 255  # what common file systems accept

Disposition = Literal["attachment", "inline"]

# Path separators, C0 and C1 controls and DEL: a name a client would write somewhere it
# should not (`../../x`), or that hides its real extension from the reader.
_FILENAME_BAD = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# The id part of a Content-ID: printable ASCII without the angle brackets that frame it.
_CONTENT_ID = re.compile(r"^[!-;=?-~]{1,250}$")
_WHITESPACE = re.compile(rb"[ \t\r\n]")

EXECUTABLE_EXTENSIONS = frozenset(
    (".exe", ".bat", ".cmd", ".scr", ".js", ".vbs", ".jar", ".msi", ".com", ".ps1")
)
_MZ = b"MZ"  # DOS/Windows executables (.exe, .dll, .scr...) whatever they are called

# Where a declared type has a signature, the bytes must carry it: a "png" that is not one is
# at best broken and at worst something dressed up to get past a filter.
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "application/pdf": (b"%PDF-",),
    "application/zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "application/gzip": (b"\x1f\x8b",),
}
# Structural types: their bytes would be read as MIME structure, not as a file.
_REFUSED_TYPES = ("multipart/", "message/")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str
    disposition: Disposition = "attachment"
    content_id: str | None = None

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.content).digest()


def decode_content(encoded: str, field: str) -> bytes:
    """Standard base64 (line breaks and spaces allowed, as MIME writes it); refuses anything
    else, and anything that would decode past MAX_ATTACHMENT_BYTES before decoding it."""
    raw = _WHITESPACE.sub(b"", encoded.encode("ascii", "replace"))
    if len(raw) // 4 * 3 > MAX_ATTACHMENT_BYTES + 2:
        raise InvalidMessage(field, f"larger than {MAX_ATTACHMENT_BYTES} bytes decoded")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage(field, "not valid base64") from None


def is_executable(attachment: Attachment) -> bool:
    # Windows ignores trailing dots and spaces: `x.exe.` runs as `x.exe`.
    name = attachment.filename.rstrip(". ").lower()
    return name.endswith(tuple(EXECUTABLE_EXTENSIONS)) or attachment.content.startswith(_MZ)


def check(attachments: Sequence[Attachment]) -> None:
    """Every check but the executable policy (which needs the account; see enqueue)."""
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidMessage("attachments", f"at most {MAX_ATTACHMENTS} attachments")
    total = 0
    content_ids: set[str] = set()
    for i, a in enumerate(attachments):
        where = f"attachments[{i}]"
        if len(a.content) > MAX_ATTACHMENT_BYTES:
            raise InvalidMessage(
                f"{where}.content", f"larger than {MAX_ATTACHMENT_BYTES} bytes decoded"
            )
        total += len(a.content)
        if total > MAX_MESSAGE_ATTACHMENT_BYTES:
            raise InvalidMessage(
                f"{where}.content",
                f"attachments together larger than {MAX_MESSAGE_ATTACHMENT_BYTES} bytes decoded",
            )
        _check_filename(a.filename, f"{where}.filename")
        _check_content_type(a, where)
        if a.disposition not in ("attachment", "inline"):
            raise InvalidMessage(f"{where}.disposition", 'must be "attachment" or "inline"')
        if a.content_id is not None:
            if not _CONTENT_ID.match(a.content_id):
                raise InvalidMessage(
                    f"{where}.content_id",
                    "printable ASCII without spaces or angle brackets, at most 250 characters",
                )
            if a.content_id in content_ids:
                raise InvalidMessage(f"{where}.content_id", "used by another attachment")
            content_ids.add(a.content_id)
        elif a.disposition == "inline":
            raise InvalidMessage(
                f"{where}.content_id", "required for an inline attachment (cid:<content_id>)"
            )


def _check_filename(name: str, field: str) -> None:
    if not name or name.strip(" .") == "":
        raise InvalidMessage(field, "must not be empty")
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidMessage(field, f"at most {MAX_FILENAME_CHARS} characters")
    bad = _FILENAME_BAD.search(name)
    if bad is not None:
        raise InvalidMessage(
            field,
            f"must not contain path separators or control characters (U+{ord(bad.group()):04X})",
        )
    try:
        name.encode("utf-8")
    except UnicodeError:
        raise InvalidMessage(field, "not valid Unicode") from None


def _check_content_type(a: Attachment, where: str) -> None:
    field = f"{where}.content_type"
    if not _CONTENT_TYPE.match(a.content_type):
        raise InvalidMessage(field, "must be a lower-case type/subtype, without parameters")
    if a.content_type.startswith(_REFUSED_TYPES):
        raise InvalidMessage(field, f"{a.content_type} cannot be attached as a file")
    signatures = _SIGNATURES.get(a.content_type)
    if signatures and not a.content.startswith(signatures):
        raise InvalidMessage(
            f"{where}.content", f"does not look like {a.content_type} (wrong file signature)"
        )


async def check_executables(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, attachments: Sequence[Attachment]
) -> None:
    """Refuses executables unless the account allows them (asked only when there is one)."""
    for i, attachment in enumerate(attachments):
        if is_executable(attachment):
            if not await conn.fetchval(SQL["allows_executable_attachments"], tenant_id):
                raise InvalidMessage(
                    f"attachments[{i}].content",
                    "executable files are refused (the account can allow them: "
                    "allow_executable_attachments)",
                )
            return


async def store(conn: asyncpg.Connection, tenant_id: int, attachments: Sequence[Attachment]) -> Any:
    """Store the bytes (once per tenant and sha256); returns what `messages.attachments` holds
    for them. Must run in the caller's transaction, with the messages it belongs to."""
    unique = {a.sha256: a.content for a in attachments}
    shas = list(unique)
    ids: dict[bytes, int] = {}
    # A concurrent send of the same bytes may commit between this statement's snapshot and
    # its insert (ON CONFLICT then skips the row, and the snapshot cannot see it): the
    # second pass, a new statement, does.
    for _ in range(3):
        missing = [s for s in shas if s not in ids]
        if not missing:
            break
        rows = await conn.fetch(
            SQL["store_attachments"],
            tenant_id,
            missing,
            [len(unique[s]) for s in missing],
            [unique[s] for s in missing],
        )
        ids.update({bytes(r["sha256"]): r["id"] for r in rows})
    return [
        {
            "id": ids[a.sha256],
            "filename": a.filename,
            "content_type": a.content_type,
            "disposition": a.disposition,
            "content_id": a.content_id,
        }
        for a in attachments
    ]
