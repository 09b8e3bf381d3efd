"""Inbound: the replies and automatic replies to the tenant's messages, and any mail to the
tenant's own inbound address, kept whole.

`penguinmails inbound` stores a reply to one of our messages (inbound/server.py) for the
message's tenant row, so a test-mode message's replies are test-mode objects; mail to a
mode's inbound address (`in-<token>@<bounce domain>`) is stored for that mode with no
message when it answers none. Here:
- `GET /api/v1/settings/inbound` gives this mode's address; `POST .../rotate` replaces it
  (mail to the old one is dropped from then on, as to any unknown address);
- `GET /api/v1/inbound` lists them newest first (optionally the replies to one message);
- `GET /api/v1/inbound/{id}` reads one: fields, bodies, headers, and for each attachment and
  for the raw mail a download link;
- `GET /api/v1/inbound/{id}/attachments/{n}?token=...` and `GET /api/v1/inbound/{id}/raw?token=...`
  download. These take no API key: the link is the credential, as a pre-signed object-store
  URL is, so it can be handed to a browser or another system without a key. Its token is
  signed with the server keys for its own purpose (penguinmails.tokens), names the mail, the
  part and an expiry an hour after the link was made; a token that does not verify, has
  expired, or names another mail or part is 404, like a mail that does not exist. Mail
  content is the sender's, so it is always a download (Content-Disposition: attachment,
  nosniff, a sandboxing CSP), never rendered inline on our origin.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from api.errors import not_found, validation_error
from api.models import (
    InboundAddress,
    InboundAttachment,
    InboundEmail,
    InboundEmailSummary,
    InboundListQuery,
    Page,
)
from api.routing import API, STATE, Call, decode_cursor, is_public_id, keyset_page
from penguinmails.queries import load
from penguinmails.tokens import BadToken, LinkSigner

SQL = load("api", "inbound.sql")

PURPOSE = "inbound_download"
LINK_TTL_SECONDS = 3600
RAW = "raw"
# A declared type we pass on as the download's Content-Type; anything else is octet-stream.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Opened by mistake in a browser it can run nothing and load nothing.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    # The link is the credential: no cache keeps it, no Referer carries it on.
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
}


# ---------------------------------------------------------------------------------------------
# Download links


def sign_link(signer: LinkSigner, inbound_id: str, part: int | str, expires: int) -> str:
    """The token of a download link for `part` (an attachment's index, or RAW) of a mail."""
    return signer.sign(PURPOSE, inbound_id, part, expires)


def verify_link(signer: LinkSigner, token: str, inbound_id: str, part: int | str) -> bool:
    """Whether `token` is a current link to exactly this part of this mail."""
    try:
        fields = signer.verify(PURPOSE, token)
    except BadToken:
        return False
    if len(fields) != 3 or not fields[2].isdigit():
        return False
    return fields[0] == inbound_id and fields[1] == str(part) and int(fields[2]) > time.time()


def _links(call: Call[Any, Any], inbound_id: str) -> tuple[str, int]:
    """The base of this mail's download links, as the caller reached us, and their expiry."""
    prefix = call.request.path.partition("/inbound")[0]
    base = f"{call.request.url.origin()}{prefix}/inbound/{inbound_id}"
    return base, int(time.time()) + LINK_TTL_SECONDS


# ---------------------------------------------------------------------------------------------
# Routes


@API.route(
    "GET",
    "/settings/inbound",
    summary="This mode's inbound address: mail sent there arrives as email.received",
    tag="Inbound",
    response=InboundAddress,
    tier="starter",
)
async def get_inbound_address(call: Call[None, None]) -> InboundAddress:
    token = await call.pool.fetchval(SQL["inbound_token"], call.principal.tenant_id)
    return _address(call, token)


@API.route(
    "POST",
    "/settings/inbound/rotate",
    summary="Replace this mode's inbound address; mail to the old one is no longer accepted",
    tag="Inbound",
    response=InboundAddress,
    tier="starter",
)
async def rotate_inbound_address(call: Call[None, None]) -> InboundAddress:
    token = await call.pool.fetchval(SQL["rotate_inbound_token"], call.principal.tenant_id)
    return _address(call, token)


def _address(call: Call[Any, Any], token: str) -> InboundAddress:
    domain = call.state.settings.inbound_domains()[0]
    return InboundAddress(address=f"in-{token}@{domain}", domain=domain)


@API.route(
    "GET",
    "/inbound",
    summary="List replies, automatic replies and mail to your inbound address, newest first",
    tag="Inbound",
    query=InboundListQuery,
    response=Page[InboundEmailSummary],
    tier="starter",
)
async def list_inbound(call: Call[None, InboundListQuery]) -> Page[InboundEmailSummary]:
    query = call.query
    if query.message_id is not None and not is_public_id(query.message_id, "msg"):
        raise validation_error([{"field": "message_id", "message": "must be a msg_ id"}])
    rows = await call.pool.fetch(
        SQL["list_inbound"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
        query.message_id,
    )
    return keyset_page(Page[InboundEmailSummary], rows, query.limit, _summary)


@API.route(
    "GET",
    "/inbound/{id}",
    summary="Read a reply whole, with download links for its attachments",
    tag="Inbound",
    response=InboundEmail,
    errors=(404,),
    tier="starter",
)
async def get_inbound(call: Call[None, None]) -> InboundEmail:
    inbound_id = call.path_id("inb", "Inbound email")
    row = await call.pool.fetchrow(SQL["get_inbound"], call.principal.tenant_id, inbound_id)
    if row is None:
        raise not_found("Inbound email")
    base, expires = _links(call, inbound_id)
    expires_at = datetime.fromtimestamp(expires, UTC)
    signer = call.state.link_signer
    attachments = [
        InboundAttachment(
            index=a["index"],
            filename=a["filename"],
            content_type=a["content_type"],
            size=a["size"],
            sha256=a["sha256"],
            url=f"{base}/attachments/{a['index']}?token="
            + sign_link(signer, inbound_id, a["index"], expires),
            url_expires_at=expires_at,
        )
        for a in row["attachments"]
    ]
    return InboundEmail.model_validate(
        {
            **_fields(row),
            "to": row["to_emails"],
            "cc": row["cc_emails"],
            "text": row["text_body"],
            "html": row["html_body"],
            "headers": [(str(n), str(v)) for n, v in row["headers"]],
            "attachments": attachments,
            "raw_url": f"{base}/raw?token=" + sign_link(signer, inbound_id, RAW, expires),
            "raw_url_expires_at": expires_at,
        }
    )


def _fields(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "from": row["from_email"],
        "subject": row["subject"],
        "auto": row["auto"],
        "attachment_count": row["attachment_count"],
        "received_at": row["received_at"],
    }


def _summary(row: Any) -> InboundEmailSummary:
    return InboundEmailSummary.model_validate(_fields(row))


async def download_attachment(request: web.Request) -> web.StreamResponse:
    inbound_id, index_text = request.match_info["id"], request.match_info["index"]
    if not index_text.isdigit() or len(index_text) > 6:
        raise not_found("Attachment")
    index = int(index_text)
    _check_link(request, inbound_id, index, "Attachment")
    row = await request.app[STATE].pool.fetchrow(SQL["inbound_attachment"], inbound_id, index)
    if row is None or row["meta"] is None:
        raise not_found("Attachment")
    meta = row["meta"]
    kind = str(meta.get("content_type", "")).lower()
    return _download(
        bytes(row["content"]),
        kind if _MEDIA_TYPE.match(kind) else "application/octet-stream",
        str(meta.get("filename") or "attachment"),
    )


async def download_raw(request: web.Request) -> web.StreamResponse:
    inbound_id = request.match_info["id"]
    _check_link(request, inbound_id, RAW, "Inbound email")
    raw = await request.app[STATE].pool.fetchval(SQL["inbound_raw"], inbound_id)
    if raw is None:
        raise not_found("Inbound email")
    return _download(bytes(raw), "message/rfc822", f"{inbound_id}.eml")


def _check_link(request: web.Request, inbound_id: str, part: int | str, what: str) -> None:
    token = request.query.get("token", "")
    if not is_public_id(inbound_id, "inb") or "\0" in token:
        raise not_found(what)
    if not verify_link(request.app[STATE].link_signer, token, inbound_id, part):
        raise not_found(what)


def _download(body: bytes, content_type: str, filename: str) -> web.Response:
    response = web.Response(body=body, content_type=content_type, headers=_DOWNLOAD_HEADERS)
    response.headers["Content-Disposition"] = _disposition(filename)
    return response


def _disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback name for old clients, the real one UTF-8 encoded."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def add_downloads(app: web.Application, prefix: str) -> None:
    """The download routes: outside the API registry, since they answer bytes rather than
    the JSON envelope and authenticate by their token rather than a key (errors still come in
    the envelope)."""
    app.router.add_get(f"{prefix}/inbound/{{id}}/attachments/{{index}}", download_attachment)
    app.router.add_get(f"{prefix}/inbound/{{id}}/raw", download_raw)
