"""The sandbox inbox: what the capture sink received, read through the API and a web page.

`GET /api/v1/sandbox/messages` lists the caller's captured messages, newest first;
`GET /api/v1/sandbox/messages/{id}` is one of them as a recipient would get it: the raw
source, the parsed headers, the text and html parts, and the DKIM verdict. DKIM is checked
with dkimpy (the reference verifier), its DNS lookups answered from `sending_domains`, so a
message signed with a domain's current key passes here exactly when it would pass at a
receiver once the printed TXT record is published.

`/sandbox` is a small page over those two routes. The API key stays in the browser's
sessionStorage; the html part is shown in an `<iframe sandbox srcdoc>` with neither
allow-scripts nor allow-same-origin, under a Content-Security-Policy that allows scripts
from this origin only (one static file, no inline script).
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from importlib import resources
from typing import Any, Literal

import asyncpg
import dkim
from aiohttp import web
from dkim.util import InvalidTagValueList, parse_tag_value
from pydantic import Field

from api.errors import not_found
from api.models import ListQuery, Owned, Page, Response
from api.routing import API, Call, decode_cursor, keyset_page
from penguinmails.queries import load

SQL = load("api", "sandbox.sql")
log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Models


class SandboxMessageSummary(Owned):
    id: str = Field(description="The capture's id: GET /api/v1/sandbox/messages/{id}.")
    message_id: str | None = Field(
        description="The message this delivered: GET /api/v1/messages/{id}."
    )
    subject: str
    from_: str = Field(alias="from", description="The From header, as a mail client shows it.")
    to: str = Field(description="The To header.")
    mail_from: str = Field(description="The SMTP envelope sender (the VERP return path).")
    rcpt_tos: list[str] = Field(description="The SMTP envelope recipients.")
    size: int = Field(description="Bytes, as received.")
    received_at: datetime


class SandboxHeader(Response):
    name: str
    value: str


DkimVerdict = Literal["pass", "fail", "neutral"]


class DkimSignature(Response):
    domain: str
    selector: str
    algorithm: str
    result: DkimVerdict = Field(
        description="neutral: a signature this server cannot check (ed25519 without PyNaCl)."
    )
    reason: str | None = Field(default=None, description="Why it did not pass.")


class DkimReport(Response):
    result: Literal["pass", "fail", "neutral", "none"] = Field(
        description="pass: some signature verifies; none: the message is not signed."
    )
    domain: str | None = Field(description="d= of the passing signature, else of the first.")
    selector: str | None = Field(description="s= of the same signature.")
    signatures: list[DkimSignature]


class SandboxMessage(SandboxMessageSummary):
    headers: list[SandboxHeader] = Field(description="Every header field, in order, decoded.")
    text: str | None = Field(description="The text/plain part.")
    html: str | None = Field(description="The text/html part.")
    raw: str = Field(description="The source as received (bytes that are not UTF-8 replaced).")
    dkim: DkimReport


# ---------------------------------------------------------------------------------------------
# Routes


@API.route(
    "GET",
    "/sandbox/messages",
    summary="List captured sandbox messages, newest first",
    tag="Sandbox",
    query=ListQuery,
    response=Page[SandboxMessageSummary],
)
async def list_sandbox_messages(call: Call[None, ListQuery]) -> Page[SandboxMessageSummary]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_sandbox_messages"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
    )
    parser = BytesHeaderParser(policy=email.policy.default)
    return keyset_page(
        Page[SandboxMessageSummary],
        rows,
        query.limit,
        lambda r: SandboxMessageSummary.model_validate(_summary(r, parser.parsebytes(r["head"]))),
    )


@API.route(
    "GET",
    "/sandbox/messages/{id}",
    summary="Get a captured message: raw source, headers, parts and DKIM result",
    tag="Sandbox",
    response=SandboxMessage,
    errors=(404,),
)
async def get_sandbox_message(call: Call[None, None]) -> SandboxMessage:
    row = await call.pool.fetchrow(
        SQL["get_sandbox_message"],
        call.principal.tenant_id,
        call.path_id("cap", "Sandbox message"),
    )
    if row is None:
        raise not_found("Sandbox message")
    raw: bytes = row["data"]
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    report = await verify_dkim(call.pool, raw)
    return SandboxMessage.model_validate(
        {
            **_summary(row, parsed),
            "headers": [{"name": n, "value": v} for n, v in _headers(parsed)],
            "text": _part(parsed, "plain"),
            "html": _part(parsed, "html"),
            "raw": raw.decode("utf-8", errors="replace"),
            "dkim": report,
        }
    )


def _summary(row: Mapping[str, Any], headers: Any) -> dict[str, Any]:
    """The fields a list item and a full message share, by their JSON names."""
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "subject": _header(headers, "subject"),
        "from": _header(headers, "from"),
        "to": _header(headers, "to"),
        "mail_from": row["mail_from"],
        "rcpt_tos": list(row["rcpt_tos"]),
        "size": row["size"],
        "received_at": row["received_at"],
    }


def _header(message: Any, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a header the parser cannot make sense of: not worth a failed list
        return ""
    return "" if value is None else str(value)


def _headers(message: EmailMessage) -> list[tuple[str, str]]:
    fields = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # undecodable: the raw text is still worth showing
            value = str(raw)
        fields.append((name, value))
    return fields


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset, a broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else None


# ---------------------------------------------------------------------------------------------
# DKIM


async def verify_dkim(pool: asyncpg.Pool, raw: bytes) -> DkimReport:
    """Verify every DKIM-Signature of `raw`, with keys from `sending_domains` as the DNS."""
    signatures = _signature_tags(raw)
    if not signatures:
        return DkimReport(result="none", domain=None, selector=None, signatures=[])
    pairs = [(s["d"], s["s"]) for s in signatures if s["d"] and s["s"]]
    rows = await pool.fetch(SQL["sandbox_dkim_keys"], [d for d, _ in pairs], [s for _, s in pairs])
    records = {
        f"{r['selector']}._domainkey.{r['domain']}.".encode(): _txt(r["algorithm"], r["public_key"])
        for r in rows
    }
    checked = await asyncio.to_thread(_verify_all, raw, signatures, records)
    chosen = next((s for s in checked if s.result == "pass"), checked[0])
    results = {s.result for s in checked}
    overall: Literal["pass", "fail", "neutral"] = (
        "pass" if "pass" in results else "fail" if "fail" in results else "neutral"
    )
    return DkimReport(
        result=overall, domain=chosen.domain, selector=chosen.selector, signatures=checked
    )


def _txt(algorithm: str, public_key: str) -> bytes:
    kind = "ed25519" if algorithm == "ed25519-sha256" else "rsa"
    return f"v=DKIM1; k={kind}; p={public_key}".encode()


def _signature_tags(raw: bytes) -> list[dict[str, str]]:
    """d=, s= and a= of each DKIM-Signature, in order (dkimpy's idx); '' where unreadable."""
    found = []
    for name, value in dkim.DKIM(raw).headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = parse_tag_value(b"".join(value.split()))
        except InvalidTagValueList:
            tags = {}
        found.append(
            {
                k: tags.get(k.encode(), b"").decode("ascii", errors="replace").lower()
                for k in ("d", "s", "a")
            }
        )
    return found


def _verify_all(
    raw: bytes, signatures: Sequence[Mapping[str, str]], records: Mapping[bytes, bytes]
) -> list[DkimSignature]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.lower())

    checked = []
    for idx, tags in enumerate(signatures):
        domain, selector = tags["d"], tags["s"]
        result: DkimVerdict = "fail"
        reason: str | None = None
        if not (domain and selector):
            reason = "malformed signature (no d= or s=)"
        elif f"{selector}._domainkey.{domain}.".encode() not in records:
            reason = f"no key published at {selector}._domainkey.{domain}"
        else:
            try:
                if dkim.DKIM(raw).verify(idx=idx, dnsfunc=lookup):
                    result = "pass"
                else:
                    reason = "signature does not verify"
            except dkim.NaClNotFoundError:
                result, reason = "neutral", "ed25519 verification needs PyNaCl (not installed)"
            except dkim.DKIMException as exc:
                reason = str(exc) or type(exc).__name__
        checked.append(
            DkimSignature(
                domain=domain,
                selector=selector,
                algorithm=tags["a"],
                result=result,
                reason=reason,
            )
        )
    return checked


# ---------------------------------------------------------------------------------------------
# The page

# Scripts only from this origin (one file). Styles may be inline and images come from
# anywhere because the srcdoc iframe inherits this policy and a message must render as its
# recipient sees it (inline CSS, remote images, the open pixel); the iframe's sandbox without
# allow-scripts keeps the message's own scripts from running at all.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: http: https:; "
    "font-src 'self' data: http: https:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

# The page's three files ship as package data (api/static/sandbox): html, css and a script
# that sets no innerHTML anywhere (everything from a message is set as text, except the html
# part, which only ever goes into the sandboxed iframe's srcdoc). Read once, at import.
_STATIC = resources.files("api") / "static" / "sandbox"
PAGE_HTML = (_STATIC / "index.html").read_text(encoding="utf-8")
PAGE_CSS = (_STATIC / "app.css").read_text(encoding="utf-8")
PAGE_JS = (_STATIC / "app.js").read_text(encoding="utf-8")


def _static(body: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS
        )

    return handler


def add_page(app: web.Application, path: str = "/sandbox") -> None:
    """The inbox page and its two static files, outside /api/v1 (no envelope, no auth:
    they hold no data; the page asks for a key and calls the API with it)."""
    app.router.add_get(path, _static(PAGE_HTML, "text/html"))
    app.router.add_get(f"{path}/app.js", _static(PAGE_JS, "text/javascript"))
    app.router.add_get(f"{path}/app.css", _static(PAGE_CSS, "text/css"))
