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
from typing import Any, Literal

import asyncpg
import dkim
from aiohttp import web
from dkim.util import InvalidTagValueList, parse_tag_value
from pydantic import Field

from api.envelope import not_found
from api.models import ListQuery, Owned, Page, Response
from api.routing import API, Call, decode_cursor, encode_cursor
from penguinmails.queries import load

SQL = load("api", "sandbox.sql")
log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Models


class SandboxMessageSummary(Owned):
    id: int = Field(description="The capture's id: GET /api/v1/sandbox/messages/{id}.")
    message_id: int | None = Field(
        description="The queue id of the message this delivered: GET /api/v1/messages/{id}."
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
async def list_sandbox_messages(call: Call) -> Page[SandboxMessageSummary]:
    query: ListQuery = call.query
    rows = await call.pool.fetch(
        SQL["list_sandbox_messages"],
        call.principal.tenant_id,
        decode_cursor(query.cursor),
        query.limit + 1,
    )
    parser = BytesHeaderParser(policy=email.policy.default)
    items = [
        SandboxMessageSummary.model_validate(_summary(r, parser.parsebytes(r["head"])))
        for r in rows[: query.limit]
    ]
    more = len(rows) > query.limit
    return Page[SandboxMessageSummary](
        items=items, has_more=more, next_cursor=encode_cursor(items[-1].id) if more else None
    )


@API.route(
    "GET",
    "/sandbox/messages/{id}",
    summary="Get a captured message: raw source, headers, parts and DKIM result",
    tag="Sandbox",
    response=SandboxMessage,
    errors=(404,),
)
async def get_sandbox_message(call: Call) -> SandboxMessage:
    row = await call.pool.fetchrow(
        SQL["get_sandbox_message"],
        call.principal.tenant_id,
        call.path_id("id", "Sandbox message"),
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

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>PenguinMails sandbox inbox</title>
<link rel="stylesheet" href="/sandbox/app.css">
<script src="/sandbox/app.js" defer></script>
</head>
<body>
<header>
  <h1>Sandbox inbox</h1>
  <button id="signout" type="button" hidden>Forget key</button>
</header>
<form id="login" hidden>
  <label for="key">API key</label>
  <input id="key" name="key" type="password" autocomplete="off" spellcheck="false"
         placeholder="sk_test_...">
  <button type="submit">Open inbox</button>
  <p class="hint">Printed by <code>penguinmails up</code>; kept for this tab only
  (sessionStorage).</p>
</form>
<p id="error" role="alert" hidden></p>
<main>
  <section id="list" hidden>
    <table>
      <thead><tr><th>Received</th><th>From</th><th>To</th><th>Subject</th></tr></thead>
      <tbody id="rows"></tbody>
    </table>
    <p id="empty" hidden>Nothing captured yet.</p>
    <button id="more" type="button" hidden>Older messages</button>
  </section>
  <section id="message" hidden>
    <p><a href="#">&larr; All messages</a></p>
    <h2 id="subject"></h2>
    <dl id="summary"></dl>
    <p id="dkim"></p>
    <nav>
      <button type="button" data-tab="html">HTML</button>
      <button type="button" data-tab="text">Text</button>
      <button type="button" data-tab="headers">Headers</button>
      <button type="button" data-tab="raw">Source</button>
    </nav>
    <iframe id="tab-html" class="tab" title="Message (html)" referrerpolicy="no-referrer"
            sandbox="allow-popups allow-popups-to-escape-sandbox"></iframe>
    <pre id="tab-text" class="tab" hidden></pre>
    <table id="tab-headers" class="tab" hidden><tbody></tbody></table>
    <pre id="tab-raw" class="tab" hidden></pre>
  </section>
</main>
</body>
</html>
"""

PAGE_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; }
header { display: flex; align-items: center; justify-content: space-between; }
h1 { font-size: 1.4rem; margin: 0 0 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #ddd;
         vertical-align: top; overflow-wrap: anywhere; }
tbody#rows tr { cursor: pointer; }
tbody#rows tr:hover { background: #f3f6fa; }
#error { color: #a00; }
.hint { color: #666; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { color: #666; }
dd { margin: 0; overflow-wrap: anywhere; }
nav { margin: 1rem 0 .5rem; display: flex; gap: .5rem; }
nav button[aria-pressed="true"] { font-weight: bold; }
iframe { width: 100%; height: 70vh; border: 1px solid #ccc; background: #fff; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f7f7f7; padding: .75rem; }
.pass { color: #070; } .fail { color: #a00; } .none, .neutral { color: #666; }
"""

# No innerHTML anywhere: everything from a message is set as text, except the html part,
# which only ever goes into the sandboxed iframe's srcdoc.
PAGE_JS = """'use strict';
(function () {
  const KEY = 'penguinmails.sandbox.key';
  const API = '/api/v1/sandbox/messages';
  const $ = (id) => document.getElementById(id);
  let cursor = null;

  function show(id, visible) { $(id).hidden = !visible; }
  function fail(text) { $('error').textContent = text; show('error', Boolean(text)); }
  function cell(row, text) {
    const td = document.createElement('td');
    td.textContent = text;
    row.appendChild(td);
  }
  function when(iso) { return new Date(iso).toLocaleString(); }

  async function call(path) {
    const key = sessionStorage.getItem(KEY);
    const res = await fetch(path, { headers: { Authorization: 'Bearer ' + key } });
    const body = await res.json().catch(() => null);
    if (res.status === 401) { sessionStorage.removeItem(KEY); route(); }
    if (!body || !body.success) {
      throw new Error(body && body.error ? body.error.message : 'HTTP ' + res.status);
    }
    return body.data;
  }

  async function list(more) {
    show('message', false);
    show('list', true);
    if (!more) { $('rows').replaceChildren(); cursor = null; }
    const query = '?limit=50' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
    const page = await call(API + query);
    for (const m of page.items) {
      const row = document.createElement('tr');
      cell(row, when(m.received_at));
      cell(row, m.from);
      cell(row, m.to);
      cell(row, m.subject || '(no subject)');
      row.addEventListener('click', () => { location.hash = '#/messages/' + m.id; });
      $('rows').appendChild(row);
    }
    cursor = page.next_cursor;
    show('more', page.has_more);
    show('empty', $('rows').children.length === 0);
  }

  function tab(name) {
    for (const el of document.querySelectorAll('.tab')) el.hidden = el.id !== 'tab-' + name;
    for (const b of document.querySelectorAll('nav button')) {
      b.setAttribute('aria-pressed', String(b.dataset.tab === name));
    }
  }

  async function message(id) {
    show('list', false);
    const m = await call(API + '/' + encodeURIComponent(id));
    $('subject').textContent = m.subject || '(no subject)';
    const summary = $('summary');
    summary.replaceChildren();
    const fields = [['From', m.from], ['To', m.to], ['Received', when(m.received_at)],
      ['Envelope from', m.mail_from], ['Envelope to', m.rcpt_tos.join(', ')],
      ['Size', m.size + ' bytes']];
    for (const [name, value] of fields) {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      summary.append(dt, dd);
    }
    const dkim = $('dkim');
    dkim.className = m.dkim.result;
    dkim.textContent = 'DKIM: ' + m.dkim.result + (m.dkim.domain
      ? ' (d=' + m.dkim.domain + ', s=' + m.dkim.selector + ')' : '') +
      m.dkim.signatures.filter((s) => s.reason).map((s) => '; ' + s.reason).join('');
    const rows = $('tab-headers').tBodies[0];
    rows.replaceChildren();
    for (const h of m.headers) {
      const row = document.createElement('tr');
      cell(row, h.name);
      cell(row, h.value);
      rows.appendChild(row);
    }
    $('tab-text').textContent = m.text === null ? '(no text part)' : m.text;
    $('tab-raw').textContent = m.raw;
    // Links open in a new tab (the tracker's click redirect), outside the sandbox.
    $('tab-html').srcdoc = m.html === null ? '' : '<base target="_blank">' + m.html;
    tab(m.html === null ? 'text' : 'html');
    show('message', true);
  }

  async function route() {
    fail('');
    const signedIn = Boolean(sessionStorage.getItem(KEY));
    show('login', !signedIn);
    show('signout', signedIn);
    if (!signedIn) { show('list', false); show('message', false); return; }
    const match = location.hash.match(/^#\\/messages\\/(\\d+)$/);
    try {
      if (match) await message(match[1]); else await list(false);
    } catch (err) { fail(err.message); }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('key').value.trim();
      if (key) sessionStorage.setItem(KEY, key);
      $('key').value = '';
      route();
    });
    $('signout').addEventListener('click', () => { sessionStorage.removeItem(KEY); route(); });
    $('more').addEventListener('click', () => list(true).catch((err) => fail(err.message)));
    for (const b of document.querySelectorAll('nav button')) {
      b.addEventListener('click', () => tab(b.dataset.tab));
    }
    window.addEventListener('hashchange', route);
    route();
  });
})();
"""


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
