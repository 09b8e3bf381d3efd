"""Conversion tokens: what the tracker hands the destination site of a tracked click, so that
site can report a conversion (`POST /api/v1/conversions`) without an API key.

When the tracker redirects a tracked click it appends `?pm_cv=<token>` (the parameter's name
is `[tracker] conversion_param`; empty disables it). The token names the message (its queue
id), the link and the moment of the click, signed with the server keys for the purpose
"conversion" (penguinmails.tokens), so nobody can mint one for a message of their choosing
and a click token or unsubscribe token is never a conversion token. It is good for
TOKEN_TTL_SECONDS after the click and for one conversion: the API stores `token_hash` of each
token it accepts under a unique index and answers a second use 409. The tracker and the API
both use this module; neither stores the token itself.

The signed payload is readable (base64url, as in every tracking link): it holds the queue id
the click link already carried, and nothing about the recipient.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from penguinmails.tokens import BadToken, LinkSigner

PURPOSE = "conversion"
TOKEN_TTL_SECONDS = 30 * 86400


class ExpiredToken(BadToken):
    """A conversion token that verifies but is older than TOKEN_TTL_SECONDS."""


@dataclass(frozen=True)
class ConversionClick:
    """What a verified token names: the message, the link in it, and when it was clicked."""

    queue_id: int
    link_index: int
    clicked_at_ms: int  # epoch milliseconds
    token_hash: bytes  # what the API stores to refuse a second use

    @property
    def clicked_at(self) -> float:
        return self.clicked_at_ms / 1000

    @property
    def expires_at(self) -> float:
        return self.clicked_at + TOKEN_TTL_SECONDS


def issue(signer: LinkSigner, queue_id: int, link_index: int, clicked_at: float) -> str:
    """The token for one click: milliseconds make two clicks on a link two tokens."""
    return signer.sign(PURPOSE, queue_id, link_index, int(clicked_at * 1000))


def verify(signer: LinkSigner, token: str, now: float) -> ConversionClick:
    """The click a token names; BadToken if no server key signed it, ExpiredToken if it
    is too old."""
    fields = signer.verify(PURPOSE, token)
    if len(fields) != 3 or not all(f.isdigit() and len(f) <= 19 for f in fields):
        raise BadToken("malformed conversion token")
    queue_id, link_index, clicked_at_ms = (int(f) for f in fields)
    click = ConversionClick(queue_id, link_index, clicked_at_ms, _hash(fields))
    if now > click.expires_at:
        raise ExpiredToken("conversion token expired")
    return click


def _hash(fields: list[str]) -> bytes:
    """A hash of what the token says, not of its text: base64url leaves spare bits in a
    token's last character, so one click's token can be spelled several ways; hashing the
    decoded fields makes every spelling (and a re-signing under a newer key) one use."""
    return hashlib.sha256("\x1f".join([PURPOSE, *fields]).encode()).digest()


def with_parameter(url: str, name: str, token: str) -> str:
    """`url` with `name=token` added to its query, before any fragment; unchanged when the
    parameter is disabled (empty name) or the URL is not http(s) (a mailto: or tel: link has
    no page to report a conversion from)."""
    if not name or not url.lower().startswith(("http://", "https://")):
        return url
    base, hash_mark, fragment = url.partition("#")
    joiner = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
    return f"{base}{joiner}{name}={token}{hash_mark}{fragment}"
