"""Header field values for the wire: folded ASCII, or RFC 2047 encoded words.

Everything returned here is ASCII and CRLF-folded, ready to be written after `Name: ` and
handed, as is, to the DKIM signer.
"""

from __future__ import annotations

import base64
import re

_LINE = 78  # RFC 5322's SHOULD; 998 is the MUST
# Control characters other than tab: no header (and no signed token) may carry them.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PHRASE_ATOMS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")


class HeaderError(ValueError):
    """A value no header field can carry; the message fails rather than being retried."""


def header_value(name: str, value: str) -> str:
    """A header value ready for the wire: folded ASCII, or RFC 2047 encoded words."""
    if CONTROL.search(value.replace("\t", " ")):
        raise HeaderError(f"{name}: control characters are not allowed")
    if value.isascii():
        folded = fold(name, value)
        if max(len(line) for line in folded.split("\r\n")) <= 998 - len(name) - 2:
            return folded
    return "\r\n ".join(encoded_words(value))


def format_address(name: str, address: str) -> str:
    """`Display Name <addr>`: atoms as they are, else a quoted string, else encoded words."""
    if not name:
        return address
    if CONTROL.search(name.replace("\t", " ")):
        raise HeaderError("from_name: control characters are not allowed")
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


def fold(name: str, value: str) -> str:
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
