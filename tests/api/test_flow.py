"""The whole flow through HTTP: key, webhook, campaign, send, delivery to an SMTP peer, pixel
and click at the tracker, analytics, signed webhooks. Every component is the real one."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import dkim as dkimpy

from api.keys import create_key
from api.server import ApiServer
from mta.domains import add_domain, show_domain
from penguinmails.config import Settings
from tests.helpers import (
    Client,
    Receiver,
    assert_error,
    campaign_keys,
    dnsfunc_for,
    verify,
    wait_for,
)
from tests.mta.test_compose import parse
from tests.smtp_peer import SMTPPeer
from tracker.server import Tracker

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


async def test_campaign_end_to_end(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
        mta={"routes": {"dest.test": smtp_peer.hop}},
    )
    # The operator's two commands: `keys create` and `domains add`.
    async with pool.acquire() as conn:
        bootstrap = await create_key(conn, tenant="acme", tier="professional")
        await add_domain(conn, settings, "acme.test", tenant="acme")

    async with (
        ApiServer(pool, settings) as api,
        Tracker(pool, settings, dispatcher={"poll_interval": 0.05}) as tracker,
    ):
        admin = Client(http, api.url + "/api/v1", bootstrap)
        key = (await admin.post("/api-keys", json={"name": "integration"})).data["key"]
        client = admin.with_key(key)

        hook = await client.post(
            "/webhooks", json={"url": receiver.url(), "events": ["email.*", "campaign.completed"]}
        )
        secret = hook.data["secret"]
        ping = (await client.post(f"/webhooks/{hook.data['id']}/test")).data
        assert ping["delivered"], ping

        made = await client.post(
            "/campaigns",
            json={
                "name": "Launch",
                "subject": "Hello {{first_name}}",
                "from": {"email": "news@acme.test", "name": "Acme News"},
                "content": {
                    # An image of its own: the open pixel then goes in whatever the length.
                    "html": '<p><img src="https://acme.test/logo.png" alt="Acme"></p>'
                    '<p>Hi {{first_name}}, see <a href="https://acme.test/pricing">'
                    "pricing</a></p>",
                },
                "recipients": [
                    {"email": "ann@dest.test", "personalization": {"first_name": "Ann"}},
                    {"email": "bob@dest.test", "personalization": {"first_name": "Bob"}},
                ],
                "settings": {"track_opens": True, "track_clicks": True},
            },
        )
        campaign_id = made.data["id"]
        sent = await client.post(f"/campaigns/{campaign_id}/send")
        assert sent.status == 202 and sent.headers["X-RateLimit-Limit"] == "100000"

        worker = await start_worker(settings)
        await wait_for(lambda: len(smtp_peer.received) == 2, timeout=20)

        async def status() -> str:
            return str((await client.get(f"/campaigns/{campaign_id}")).data["status"])

        await wait_for(lambda: _equals(status(), "completed"), timeout=20)
        await worker.stop()

        ann = next(r for r in smtp_peer.received if r.rcpt_tos == ["ann@dest.test"]).message
        assert ann["Subject"] == "Hello Ann" and "DKIM-Signature" in ann
        html = ann.get_body(("html",)).get_content()  # type: ignore[union-attr]
        pixel = re.search(r"http://tracker\.test(/o/[^\"']+)", html)
        link = re.search(r"http://tracker\.test(/c/[^\"']+)", html)
        assert pixel and link, html
        async with http.get(tracker.url + pixel.group(1), headers={"User-Agent": CHROME}) as r:
            assert r.status == 200
        async with http.get(
            tracker.url + link.group(1), headers={"User-Agent": CHROME}, allow_redirects=False
        ) as r:
            assert r.status == 302
            assert r.headers["Location"].startswith("https://acme.test/pricing?pm_cv=")

        _, public_id = await campaign_keys(pool, campaign_id)

        async def engaged() -> bool:
            reply = await client.get(f"/analytics/campaigns/{public_id}", params={"period": "24h"})
            o = reply.data["overview"]
            return bool(o["opened"] >= 1 and o["clicked"] >= 1)

        await wait_for(engaged, timeout=10)
        overview = (await client.get(f"/analytics/campaigns/{public_id}")).data["overview"]
        assert (overview["sent"], overview["delivered"], overview["bounced"]) == (2, 2, 0)
        assert overview["opened"] == 1 and overview["clicked"] == 1

        ann_id = await pool.fetchval(
            "SELECT public_id FROM messages WHERE recipient = 'ann@dest.test'"
        )
        message = (await client.get(f"/messages/{ann_id}")).data
        assert message["status"] == "sent" and message["attempts"] == 1
        assert message["last_reply_code"] == 250
        types = [e["type"] for e in message["events"]]
        assert types[:2] == ["email.sent", "email.delivered"]  # queued, then the peer's 250
        assert {"email.opened", "email.clicked"} <= set(types)

        wanted = {
            "email.sent",
            "email.delivered",
            "email.opened",
            "email.clicked",
            "campaign.completed",
        }

        def received_types() -> set[str]:
            return {verify(secret, r)["type"] for r in receiver.accepted()}

        await wait_for(lambda: wanted <= received_types(), timeout=15)
        completed = [
            verify(secret, r) for r in receiver.accepted() if b"campaign.completed" in r.body
        ]
        # Webhooks show the campaign's public id (whether the API's id is it yet or not).
        public_id = await pool.fetchval(
            "SELECT public_id FROM campaigns WHERE id::text = $1 OR public_id = $1",
            str(campaign_id),
        )
        assert len(completed) == 1 and completed[0]["data"]["campaign"]["id"] == public_id
        assert completed[0]["data"]["campaign"]["status"] == "completed"


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40


async def test_a_send_with_everything_an_application_sends(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    """cc, bcc, two attachments (one inline), reply_to, tags and metadata through the API:
    one message per envelope recipient at the SMTP peer, each parsing without defects,
    DKIM-verifying, with the attachments byte-exact; every webhook carries tags and metadata."""
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
        mta={"routes": {"dest.test": smtp_peer.hop, "hidden.test": smtp_peer.hop}},
    )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="acme", tier="professional")
        await add_domain(conn, settings, "acme.test", tenant="acme")
        records = await show_domain(conn, "acme.test")

    async with (
        ApiServer(pool, settings) as api,
        Tracker(pool, settings, dispatcher={"poll_interval": 0.05}),
    ):
        client = Client(http, api.url + "/api/v1", key)
        hook = await client.post("/webhooks", json={"url": receiver.url(), "events": ["email.*"]})
        secret = hook.data["secret"]
        sent = await client.post(
            "/emails/send",
            json={
                "from": "Acme <news@acme.test>",
                "to": ["Ann <ann@dest.test>", "bob@dest.test"],
                "cc": "carol@dest.test",
                "bcc": {"email": "dan@hidden.test"},
                "reply_to": "help@acme.test",
                "subject": "Your order",
                "content": {
                    "html": '<p>Thanks!</p><img src="cid:logo">',
                    "text": "Thanks!",
                },
                "attachments": [
                    {
                        "filename": "logo.png",
                        "content": base64.b64encode(PNG).decode(),
                        "content_type": "image/png",
                        "disposition": "inline",
                        "content_id": "logo",
                    },
                    {
                        "filename": "invoice.pdf",
                        "content": base64.b64encode(PDF).decode(),
                        "content_type": "application/pdf",
                    },
                ],
                "tags": ["orders"],
                "metadata": {"order_id": "A-17"},
                "tracking": {"track_opens": False, "track_clicks": False},
            },
        )
        assert sent.status == 202, sent.body
        assert [m["kind"] for m in sent.data["messages"]] == ["to", "to", "cc", "bcc"]

        worker = await start_worker(settings)
        await wait_for(lambda: len(smtp_peer.received) == 4, timeout=20)
        await worker.stop()
        dns = dnsfunc_for(*records)
        for received in smtp_peer.received:
            assert len(received.rcpt_tos) == 1 and b"hidden.test" not in received.data
            assert dkimpy.verify(received.data, dnsfunc=dns)
            message = parse(received.data)  # raises on any defect
            assert "Bcc" not in message and message["Reply-To"] == "help@acme.test"
            parts = {p.get_filename(): p.get_content() for p in message.iter_attachments()}
            assert parts.get("invoice.pdf") == PDF
            inline = [p for p in message.walk() if p.get("Content-ID") == "<logo>"]
            assert [p.get_content() for p in inline] == [PNG]
        assert sorted(r.rcpt_tos[0] for r in smtp_peer.received) == [
            "ann@dest.test",
            "bob@dest.test",
            "carol@dest.test",
            "dan@hidden.test",
        ]

        # email.sent and email.delivered for each of the four, every one with tags and metadata.
        await wait_for(lambda: len(receiver.accepted()) >= 8, timeout=15)
        for request in receiver.accepted():
            email = verify(secret, request)["data"]["email"]
            assert email["tags"] == ["orders"] and email["metadata"] == {"order_id": "A-17"}


async def test_a_batch_of_500_distinct_messages_is_accepted_at_once_and_delivered(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
    http: aiohttp.ClientSession,
) -> None:
    """POST /emails/batch with 500 different messages: one transaction, then each reaches the
    SMTP peer once, as itself; a batch with one bad item is refused by index, writing nothing."""
    settings = make_settings(
        api={"listen": "127.0.0.1:0"}, mta={"routes": {"dest.test": smtp_peer.hop}}
    )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="acme", tier="starter")
        await add_domain(conn, settings, "acme.test", tenant="acme")

    def item(i: int) -> dict[str, Any]:
        return {
            "from": "news@acme.test",
            "to": f"user{i}@dest.test",
            "subject": f"Order {i} shipped",
            "content": {"text": f"Parcel {i} is on its way."},
            "metadata": {"order": i},
            "tracking": {"track_opens": False, "track_clicks": False},
        }

    async with ApiServer(pool, settings) as api:
        client = Client(http, api.url + "/api/v1", key)
        bad = [item(i) for i in range(500)]
        bad[137]["to"] = "not an address"
        error = assert_error(
            await client.post("/emails/batch", json={"messages": bad}), 422, "VALIDATION_ERROR"
        )
        assert [d["field"] for d in error["details"]] == ["messages[137].to[0]"]
        assert await pool.fetchval("SELECT count(*) FROM messages") == 0

        reply = await client.post("/emails/batch", json={"messages": [item(i) for i in range(500)]})
        assert reply.status == 202, reply.body
        assert await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM messages") == 1

    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) >= 500, timeout=90)
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) = 500 FROM messages WHERE status = 'sent'"),
        timeout=15,
    )
    await worker.stop()
    got = {}
    for received in smtp_peer.received:
        [rcpt] = received.rcpt_tos
        message = parse(received.data)
        got[rcpt] = (str(message["Subject"]), message.get_content().strip())
    assert len(smtp_peer.received) == 500  # each once
    assert got == {
        f"user{i}@dest.test": (f"Order {i} shipped", f"Parcel {i} is on its way.")
        for i in range(500)
    }
