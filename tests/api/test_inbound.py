"""GET /api/v1/inbound: replies kept whole by the real inbound server, read over real HTTP;
attachments and the raw mail downloaded by signed, expiring links."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from api.inbound import sign_link
from api.routing import STATE
from api.server import ApiServer
from inbound.server import InboundServer
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import Client, assert_error
from tests.inbound.conftest import REPLY_ADDRESS, send
from tests.inbound.test_kept_whole import PDF, reply_with_attachment

Sent = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture
async def inbound(pool: asyncpg.Pool, make_settings: Callable[..., Settings]) -> Any:
    settings = make_settings(inbound={"listen": "127.0.0.1:0", "metrics_listen": ""})
    server = await InboundServer(pool, settings).start()
    yield server
    await server.stop(grace=1.0)


@pytest.fixture
def replied(pool: asyncpg.Pool, inbound: InboundServer) -> Sent:
    """A message of tenant row `tenant_id`, sent, and a reply to it through inbound: the
    message's public id and the reply's Message-ID."""

    async def make(tenant_id: int, reply_id: str = "reply-with-file@dest.test") -> tuple[str, str]:
        mode = await pool.fetchval("SELECT mode FROM tenants WHERE id = $1", tenant_id)
        [queue_id] = await enqueue(
            pool,
            tenant_id,
            Draft(
                sandbox=mode == "test",
                from_email="news@acme.test",
                subject="Hello",
                text="Hi",
                recipients=["sam@dest.test"],
            ),
        )
        row = await pool.fetchrow(
            "UPDATE messages SET status = 'sent', sent_at = now() WHERE id = $1 "
            "RETURNING public_id, message_id",
            queue_id,
        )
        raw = reply_with_attachment(row["message_id"], "sam@dest.test").replace(
            b"reply-with-file@dest.test", reply_id.encode()
        )
        errors, answer = await send(inbound.port, raw, "sam@dest.test", [REPLY_ADDRESS])
        assert errors == {} and answer.startswith("2.0.0")
        return row["public_id"], raw

    return make


async def test_a_reply_is_listed_read_and_downloaded_byte_exact(
    client: Client, tenant_id: int, replied: Sent, http: aiohttp.ClientSession
) -> None:
    message_id, raw = await replied(tenant_id)
    other_message, _ = await replied(tenant_id, "second-reply@dest.test")

    page = await client.get("/inbound")
    assert page.status == 200 and len(page.data["items"]) == 2
    assert [i["message_id"] for i in page.data["items"]] == [
        other_message,
        message_id,
    ]  # newest first
    [item] = (await client.get("/inbound", params={"message_id": message_id})).data["items"]
    assert item["from"] == "sam@dest.test" and item["subject"] == "Re: Hellö"
    assert item["auto"] is False and item["attachment_count"] == 1 and item["livemode"] is False
    first = await client.get("/inbound", params={"limit": "1"})
    assert first.data["has_more"] is True
    rest = await client.get("/inbound", params={"limit": "1", "cursor": first.data["next_cursor"]})
    assert [i["id"] for i in rest.data["items"]] == [item["id"]]
    error = assert_error(
        await client.get("/inbound", params={"message_id": "42"}), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "message_id"

    got = await client.get(f"/inbound/{item['id']}")
    assert got.status == 200
    email = got.data
    assert email["message_id"] == message_id and email["to"] == [REPLY_ADDRESS]
    assert email["cc"] == ["boss@dest.test"]
    assert email["text"] == "Yes, the pricing sheet is attached."
    assert email["html"] == "<p>Yes, the pricing sheet is attached.</p>"
    assert ["Subject", "Re: Hellö"] in email["headers"]
    [attachment] = email["attachments"]
    assert {k: attachment[k] for k in ("index", "filename", "content_type", "size", "sha256")} == {
        "index": 0,
        "filename": "pricing.pdf",
        "content_type": "application/pdf",
        "size": len(PDF),
        "sha256": hashlib.sha256(PDF).hexdigest(),
    }

    # The link is the credential: no API key.
    async with http.get(attachment["url"]) as response:
        assert response.status == 200
        assert await response.read() == PDF
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Disposition"].startswith(
            'attachment; filename="pricing.pdf"'
        )
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]
    async with http.get(email["raw_url"]) as response:
        assert response.status == 200 and await response.read() == raw
        assert response.headers["Content-Type"] == "message/rfc822"
        assert response.headers["Content-Disposition"].startswith("attachment;")


async def _not_found(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as response:
        assert response.status == 404, url
        body = await response.json()
        assert body["success"] is False and body["error"]["code"] == "NOT_FOUND"


async def test_a_wrong_expired_or_other_tenant_link_is_not_found(
    client: Client,
    tenant_id: int,
    replied: Sent,
    http: aiohttp.ClientSession,
    api: ApiServer,
    pool: asyncpg.Pool,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    await replied(tenant_id)
    [item] = (await client.get("/inbound")).data["items"]
    email = (await client.get(f"/inbound/{item['id']}")).data
    url = email["attachments"][0]["url"]
    base, _, token = url.partition("?token=")

    # Tampered: one character mid-signature changed (the last character of base64 may carry
    # only spare bits, so an edit there can leave the same bytes).
    middle = token.index(".") + 5
    flipped = token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
    await _not_found(http, f"{base}?token={flipped}")
    await _not_found(http, base)  # no token at all
    # Expired: a link signed by this server an instant ago for an hour that is over.
    signer = api.app[STATE].link_signer
    expired = sign_link(signer, item["id"], 0, int(time.time()) - 1)
    await _not_found(http, f"{base}?token={expired}")
    # Another part of the same mail, and a link that was for the raw mail.
    await _not_found(http, f"{base[:-1]}1?token={token}")
    raw_token = email["raw_url"].partition("?token=")[2]
    await _not_found(http, f"{base}?token={raw_token}")

    # Another tenant's reply: its valid link does not open this tenant's mail.
    globex = await ensure_tenant(pool, "globex", mode="test")
    await replied(globex, "globex-reply@dest.test")
    other = client.with_key(await make_key("globex", tier="starter", test=True))
    [theirs] = (await other.get("/inbound")).data["items"]
    assert theirs["id"] != item["id"]
    their_url = (await other.get(f"/inbound/{theirs['id']}")).data["attachments"][0]["url"]
    their_token = their_url.partition("?token=")[2]
    await _not_found(http, f"{base}?token={their_token}")
    # ... nor through the API: each tenant sees its own.
    assert_error(await other.get(f"/inbound/{item['id']}"), 404, "NOT_FOUND")
    assert [i["id"] for i in (await client.get("/inbound")).data["items"]] == [item["id"]]

    async with http.get(url) as response:  # the real link still works
        assert response.status == 200 and await response.read() == PDF


async def test_a_reply_belongs_to_its_message_s_mode(
    client: Client,
    live_key: str,
    tenant_id: int,
    replied: Sent,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    message_id, _ = await replied(tenant_id)  # a test-mode message
    [item] = (await client.get("/inbound")).data["items"]
    live = client.with_key(live_key)
    assert (await live.get("/inbound")).data["items"] == []
    assert (await live.get("/inbound", params={"message_id": message_id})).data["items"] == []
    assert_error(await live.get(f"/inbound/{item['id']}"), 404, "NOT_FOUND")
    assert_error(await client.get("/inbound/msg_" + "0" * 32), 404, "NOT_FOUND")

    free = client.with_key(await make_key("tiny", tier="free", test=True))
    assert_error(await free.get("/inbound"), 403, "TIER_REQUIRED")


def _first_contact(to: str, message_id: str = "first-contact@elsewhere.test") -> bytes:
    return (
        "From: Lee <lee@elsewhere.test>\r\n"
        f"To: Support <{to}>\r\n"
        "Subject: A question about pricing\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "\r\n"
        "Do you have a plan for nonprofits?\r\n"
    ).encode()


async def test_mail_to_the_tenant_s_inbound_address_is_kept_whatever_it_answers(
    client: Client,
    live_key: str,
    tenant_id: int,
    replied: Sent,
    inbound: InboundServer,
    pool: asyncpg.Pool,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    got = await client.get("/settings/inbound")
    assert got.status == 200 and got.data["livemode"] is False
    address = got.data["address"]
    assert address.startswith("in-") and address.endswith(f"@{got.data['domain']}")
    live = client.with_key(await make_key("acme", tier="enterprise"))
    live_address = (await live.get("/settings/inbound")).data["address"]
    assert live_address != address  # each mode has its own

    # A first contact, delivered twice (a retried delivery), is one mail with no message.
    for _ in range(2):
        errors, _answer = await send(
            inbound.port, _first_contact(address), "lee@elsewhere.test", [address]
        )
        assert errors == {}
    [item] = (await client.get("/inbound")).data["items"]
    assert item["message_id"] is None and item["subject"] == "A question about pricing"
    email = (await client.get(f"/inbound/{item['id']}")).data
    assert email["text"] == "Do you have a plan for nonprofits?\r\n" and email["to"] == [address]
    [event] = (await client.get("/events", params={"type": "email.received"})).data["items"]
    assert event["data"]["inbound_id"] == item["id"] and event["data"]["to"] == address
    assert (await live.get("/inbound")).data["items"] == []  # the test-mode address's mail

    # A reply to one of the tenant's messages sent to the address is that message's reply.
    message_id, _ = await replied(tenant_id, "answer@dest.test")
    row = await pool.fetchrow("SELECT message_id FROM messages WHERE public_id = $1", message_id)
    reply = reply_with_attachment(row["message_id"], "sam@dest.test").replace(
        b"reply-with-file@dest.test", b"sent-to-the-address@dest.test"
    )
    errors, _answer = await send(inbound.port, reply, "sam@dest.test", [address])
    assert errors == {}
    answers = (await client.get("/inbound", params={"message_id": message_id})).data["items"]
    assert len(answers) == 2  # the one to the reply address and the one to the inbound address

    # Quoting another tenant's message, it is still this tenant's mail and not the other's.
    other = await ensure_tenant(pool, "globex", mode="test")
    [other_queue_id] = await enqueue(
        pool,
        other,
        Draft(
            sandbox=True,
            from_email="a@globex.test",
            subject="S",
            text="T",
            recipients=["sam@dest.test"],
        ),
    )
    other_rfc_id = await pool.fetchval(
        "UPDATE messages SET status = 'sent' WHERE id = $1 RETURNING message_id", other_queue_id
    )
    quoting = reply_with_attachment(other_rfc_id, "sam@dest.test").replace(
        b"reply-with-file@dest.test", b"quotes-globex@dest.test"
    )
    assert (await send(inbound.port, quoting, "sam@dest.test", [address]))[0] == {}
    newest = (await client.get("/inbound", params={"limit": "1"})).data["items"][0]
    assert newest["message_id"] is None and newest["subject"] == "Re: Hellö"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM inbound_messages WHERE message_id = $1", other_queue_id
        )
        == 0
    )

    # Rotated: the old address takes nothing more; the new one does.
    rotated = await client.post("/settings/inbound/rotate")
    assert rotated.status == 200 and rotated.data["address"] != address
    before = await pool.fetchval("SELECT count(*) FROM inbound_emails")
    await send(
        inbound.port, _first_contact(address, "late@elsewhere.test"), "lee@x.test", [address]
    )
    assert await pool.fetchval("SELECT count(*) FROM inbound_emails") == before
    new = rotated.data["address"]
    await send(inbound.port, _first_contact(new, "new@elsewhere.test"), "lee@x.test", [new])
    assert await pool.fetchval("SELECT count(*) FROM inbound_emails") == before + 1

    free = client.with_key(await make_key("tiny", tier="free", test=True))
    assert_error(await free.get("/settings/inbound"), 403, "TIER_REQUIRED")
