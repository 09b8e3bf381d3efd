"""The sandbox inbox: messages queued in test mode, delivered by a real worker to the real
capture sink, read back through the API (each tenant its own, with the DKIM verdict), and
the page that shows them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from api.server import ApiServer
from mta.domains import add_domain
from mta.sink import start_sink
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import Client, wait_for

# With an image of its own, so the open pixel goes in (a short image-less page gets none).
HTML = (
    '<p><img src="https://acme.test/logo.png" alt="Acme"></p>'
    '<p>Hello <b>Ann</b>, see <a href="https://acme.test/pricing">pricing</a></p>'
)


@pytest.fixture
async def sink(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[str]:
    """The capture sink on a free port; yields its host:port."""
    server = await start_sink(pool, settings, listen="127.0.0.1:0")
    host, port = server.sockets[0].getsockname()[:2]
    yield f"{host}:{port}"
    server.close()
    await server.wait_closed()


async def _queue(pool: asyncpg.Pool, tenant: str, from_email: str, subject: str) -> int:
    tenant_id = await ensure_tenant(pool, tenant, mode="test")  # where test keys see it
    draft = Draft(
        from_email=from_email,
        subject=subject,
        recipients=["ann@dest.test"],
        text="Hello Ann",
        html=HTML,
        settings={"track_opens": True, "track_clicks": True},
        sandbox=True,
    )
    [queue_id] = await enqueue(pool, tenant_id, draft)
    return queue_id


async def _captured(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM sandbox_messages") >= n)


async def test_captured_messages_in_their_tenants_inbox_with_dkim(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    settings: Settings,
    sink: str,
    start_worker: Any,
    api: ApiServer,
    client: Client,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
    signed = await _queue(pool, "acme", "news@acme.test", "Signed hello")
    unsigned = await _queue(pool, "acme", "news@unsigned.test", "Unsigned hello")
    theirs = await _queue(pool, "other", "news@other.test", "Not yours")
    public = dict(
        await pool.fetch(
            "SELECT id, public_id FROM messages WHERE id = ANY($1)", [signed, unsigned, theirs]
        )
    )

    # Not sandbox mode for the worker: the messages' own test-mode flag sends them to the sink.
    await start_worker(make_settings(mta={"sandbox_sink": sink}))
    await wait_for(lambda: _captured(pool, 3), timeout=20)

    page = (await client.get("/sandbox/messages")).data
    # Newest capture first (delivery order between the two is the worker's business).
    ids = [m["id"] for m in page["items"]]
    assert ids == sorted(ids, reverse=True)
    by_queue_id = {m["message_id"]: m for m in page["items"]}
    assert set(by_queue_id) == {public[signed], public[unsigned]}
    first = by_queue_id[public[signed]]
    assert first["subject"] == "Signed hello"
    assert first["from"] == "news@acme.test" and first["to"] == "ann@dest.test"
    assert first["rcpt_tos"] == ["ann@dest.test"]
    assert re.match(rf"^b-{signed}-[a-z2-7]+@", first["mail_from"])  # the VERP return path
    assert first["size"] > 0 and first["received_at"]
    assert page["has_more"] is False and page["next_cursor"] is None

    message = (await client.get(f"/sandbox/messages/{first['id']}")).data
    assert message["dkim"]["result"] == "pass", message["dkim"]
    assert message["dkim"]["domain"] == "acme.test" and message["dkim"]["selector"] == "s1"
    assert message["dkim"]["signatures"][0]["algorithm"] == "rsa-sha256"
    names = [h["name"].lower() for h in message["headers"]]
    assert "dkim-signature" in names and "list-unsubscribe" in names
    assert {"name": "Subject", "value": "Signed hello"} in message["headers"]
    assert "Hello Ann" in message["text"]
    assert "<b>Ann</b>" in message["html"]
    assert "Subject: Signed hello" in message["raw"]
    # Tracked: the link points at the tracker, the pixel is there.
    assert "https://acme.test/pricing" not in message["html"]
    assert "/c/" in message["html"] and "/o/" in message["html"]

    unsigned_view = (
        await client.get(f"/sandbox/messages/{by_queue_id[public[unsigned]]['id']}")
    ).data
    assert unsigned_view["dkim"] == {
        "result": "none",
        "domain": None,
        "selector": None,
        "signatures": [],
    }

    # Another tenant sees its own message only, and not acme's even by id.
    other = client.with_key(await make_key("other", test=True))
    their_page = (await other.get("/sandbox/messages")).data
    assert [m["message_id"] for m in their_page["items"]] == [public[theirs]]
    missing = await other.get(f"/sandbox/messages/{first['id']}")
    assert missing.status == 404 and missing.error["code"] == "NOT_FOUND"


async def test_a_changed_message_fails_dkim_and_a_foreign_one_is_in_no_inbox(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    settings: Settings,
    sink: str,
    start_worker: Any,
    client: Client,
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
    await _queue(pool, "acme", "news@acme.test", "Original")
    await start_worker(make_settings(mta={"sandbox_sink": sink}))
    await wait_for(lambda: _captured(pool, 1), timeout=20)

    # The same bytes with the body changed in transit, as a receiver might get them.
    row = await pool.fetchrow("SELECT * FROM sandbox_messages")
    assert row is not None and b"Hello Ann" in row["data"]
    await pool.execute(
        "INSERT INTO sandbox_messages (mail_from, rcpt_tos, data, message_id, tenant_id) "
        "VALUES ($1, $2, $3, $4, $5)",
        row["mail_from"],
        row["rcpt_tos"],
        row["data"].replace(b"Hello Ann", b"Hello Bob"),
        row["message_id"],
        row["tenant_id"],
    )
    # Mail that did not come from our MTA (no signed return path) is refused, kept nowhere.
    host, port = sink.rsplit(":", 1)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await aiosmtplib.send(
            b"From: x@elsewhere.test\r\nSubject: stray\r\n\r\nhi\r\n",
            sender="x@elsewhere.test",
            recipients=["ann@dest.test"],
            hostname=host,
            port=int(port),
        )
    assert refused.value.code == 550
    assert await pool.fetchval("SELECT count(*) FROM sandbox_messages") == 2

    page = (await client.get("/sandbox/messages", params={"limit": "1"})).data
    assert page["has_more"] is True and len(page["items"]) == 1
    changed = (await client.get(f"/sandbox/messages/{page['items'][0]['id']}")).data
    assert "Hello Bob" in changed["text"]
    assert changed["dkim"]["result"] == "fail"
    assert changed["dkim"]["signatures"][0]["reason"]

    rest = (
        await client.get("/sandbox/messages", params={"limit": "1", "cursor": page["next_cursor"]})
    ).data
    assert [m["subject"] for m in rest["items"]] == ["Original"]
    assert rest["has_more"] is False
    original = (await client.get(f"/sandbox/messages/{rest['items'][0]['id']}")).data
    assert original["dkim"]["result"] == "pass"


async def test_a_signature_whose_key_is_gone_fails_with_the_reason(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    settings: Settings,
    sink: str,
    start_worker: Any,
    client: Client,
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
    await _queue(pool, "acme", "news@acme.test", "Signed then unpublished")
    await start_worker(make_settings(mta={"sandbox_sink": sink}))
    await wait_for(lambda: _captured(pool, 1), timeout=20)
    await pool.execute("DELETE FROM sending_domains")

    [item] = (await client.get("/sandbox/messages")).data["items"]
    report = (await client.get(f"/sandbox/messages/{item['id']}")).data["dkim"]
    assert report["result"] == "fail"
    assert report["signatures"][0]["reason"] == "no key published at s1._domainkey.acme.test"


async def test_the_inbox_needs_a_key_and_ids_are_checked(client: Client) -> None:
    assert (await client.get("/sandbox/messages", key=None)).status == 401
    assert (await client.get("/sandbox/messages/0")).status == 404
    assert (await client.get("/sandbox/messages/abc")).status == 404
    assert (await client.get("/sandbox/messages", params={"cursor": "junk"})).status == 422
    empty = (await client.get("/sandbox/messages")).data
    assert empty == {"items": [], "has_more": False, "next_cursor": None}


async def test_the_page_is_locked_down(api: ApiServer, client: Client) -> None:
    session = client.session
    async with session.get(api.url + "/sandbox") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"

    [frame] = re.findall(r"<iframe[^>]*>", page)
    sandbox = re.search(r'sandbox="([^"]*)"', frame)
    assert sandbox is not None
    allowed = set(sandbox.group(1).split())
    assert "allow-scripts" not in allowed and "allow-same-origin" not in allowed
    assert "<script>" not in page and "<script " in page  # only the external file

    async with session.get(api.url + "/sandbox/app.js") as response:
        assert response.status == 200
        assert response.content_type == "text/javascript"
        assert "Content-Security-Policy" in response.headers
        script = await response.text()
    assert "sessionStorage" in script and "localStorage" not in script
    assert "innerHTML" not in script and "eval(" not in script
    assert ".srcdoc" in script
    async with session.get(api.url + "/sandbox/app.css") as response:
        assert response.status == 200 and response.content_type == "text/css"
        css = await response.text()
    # The Headers tab's name column is not broken mid-word like the wrapping value column.
    rule = re.search(r"#tab-headers td:first-child \{([^}]*)\}", css)
    assert rule is not None and "white-space: nowrap" in rule.group(1)
    assert "overflow-wrap: normal" in rule.group(1)


async def test_the_operations_are_in_the_openapi_document(client: Client) -> None:
    doc = (await client.get("/openapi.json", key=None)).body
    assert "get" in doc["paths"]["/api/v1/sandbox/messages"]
    assert "get" in doc["paths"]["/api/v1/sandbox/messages/{id}"]


async def test_each_signature_of_a_doubly_signed_message_is_reported(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    settings: Settings,
    sink: str,
    start_worker: Any,
    client: Client,
) -> None:
    async with pool.acquire() as conn:
        await add_domain(
            conn, settings, "acme.test", tenant="acme", selector="s2", algorithm="both"
        )
    await _queue(pool, "acme", "news@acme.test", "Twice signed")
    await start_worker(make_settings(mta={"sandbox_sink": sink}))
    await wait_for(lambda: _captured(pool, 1), timeout=20)

    [item] = (await client.get("/sandbox/messages")).data["items"]
    report = (await client.get(f"/sandbox/messages/{item['id']}")).data["dkim"]
    assert report["result"] == "pass" and report["selector"] == "s2"
    by_algorithm = {s["algorithm"]: s for s in report["signatures"]}
    assert by_algorithm["rsa-sha256"]["result"] == "pass"
    ed = by_algorithm["ed25519-sha256"]
    assert ed["selector"] == "s2-ed25519"
    # dkimpy checks ed25519 only with PyNaCl installed; without it the verdict says so.
    assert ed["result"] == "pass" or (ed["result"] == "neutral" and "PyNaCl" in ed["reason"])
