"""The whole path: the MTA delivers a tracked message to an SMTP peer; the links in it are
fetched from the tracker; every resulting event reaches a webhook receiver that was failing
for a while, once per delivery id, with signatures the reference library accepts."""

from __future__ import annotations

import re
from collections import Counter
from email import message_from_bytes, policy

import pytest

from penguinmails.messages import Draft, enqueue
from penguinmails.webhooks import InvalidEndpoint
from penguinmails.webhooks.endpoints import create_endpoint
from tests.helpers import verify, wait_for
from tracker.dispatcher import RetryPolicy

OFFER = "https://acme.test/offer?ref=1&x=2"


async def test_tracked_message_to_signed_webhooks(
    pool, make_settings, settings, tenant, smtp_peer, start_worker, start_tracker, receiver, http
):
    endpoint, secret = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    receiver.status = 503  # failing at first
    tracker = await start_tracker(
        dispatcher={"policy": RetryPolicy(first_delay=0.05, max_delay=0.2), "poll_interval": 0.05}
    )
    mta_settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}}, tracker={"base_url": tracker.url}
    )
    [queue_id] = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="Our offer",
            recipients=["john@dest.test"],
            # An image of its own, so the open pixel goes in (a short image-less page gets none).
            html=f'<html><body><p><img src="https://acme.test/logo.png" alt="Acme"></p>'
            f'<p>Hi</p><p><a href="{OFFER.replace("&", "&amp;")}">Offer</a>'
            "</p></body></html>",
            settings={"track_opens": True, "track_clicks": True},
            tags=["launch", "q3"],
            metadata={"customer_id": "cus_42", "vip": True},
        ),
    )
    worker = await start_worker(mta_settings)
    await wait_for(lambda: len(smtp_peer.received) == 1)
    await worker.stop()

    message = message_from_bytes(smtp_peer.received[0].data, policy=policy.default)
    html = message.get_body(("html",)).get_content()
    base = re.escape(tracker.url)
    [pixel] = re.findall(rf'src="({base}/o/[^"]+)"', html)
    [click] = re.findall(rf'href="({base}/c/[^"]+)"', html)
    [unsubscribe] = re.findall(rf"<({base}/u/[^>]+)>", str(message["List-Unsubscribe"]))
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    human = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/125.0"}
    async with http.get(pixel, headers=human) as response:
        assert response.status == 200 and response.content_type == "image/gif"
    async with http.get(click, headers=human, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith(OFFER + "&pm_cv=")  # conversion token
    tampered = click[:-3] + ("AAA" if not click.endswith("AAA") else "BBB")
    async with http.get(tampered, allow_redirects=False) as response:
        assert response.status == 404 and "Location" not in response.headers
    async with http.get(unsubscribe) as response:  # the page alone changes nothing
        assert response.status == 200
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0
    async with http.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
    assert (
        await pool.fetchval(
            "SELECT reason FROM suppressions WHERE tenant_id = $1 AND email = 'john@dest.test'",
            tenant,
        )
        == "unsubscribed"
    )

    # Queued (sent), accepted by the peer (delivered), then what the tracker saw.
    kinds = ["email.sent", "email.delivered", "email.opened", "email.clicked", "email.unsubscribed"]
    rows = await pool.fetch("SELECT type FROM events WHERE message_id = $1 ORDER BY id", queue_id)
    assert [r["type"] for r in rows] == kinds

    await wait_for(lambda: len(receiver.requests) >= 10)  # each failed at least once
    receiver.status = 200  # recovered
    await wait_for(lambda: len(receiver.accepted()) == 5, timeout=15)

    assert set(Counter(r.webhook_id for r in receiver.accepted()).values()) == {1}
    payloads = [verify(secret, r) for r in receiver.requests]
    delivered = {
        p["type"]: p for p, r in zip(payloads, receiver.requests, strict=True) if r.answered == 200
    }
    assert sorted(delivered) == sorted(kinds)
    public_id = await pool.fetchval("SELECT public_id FROM messages WHERE id = $1", queue_id)
    for kind, payload in delivered.items():
        assert payload["data"]["email"] == {
            "id": public_id,
            "campaign_id": None,
            "to": "john@dest.test",
            "message_id": message["Message-ID"].strip("<>"),
            kind.removeprefix("email.") + "_at": payload["created"],
            # The send's own labels ride along on every event of the message.
            "tags": ["launch", "q3"],
            "metadata": {"customer_id": "cus_42", "vip": True},
        }
    assert delivered["email.clicked"]["data"]["url"] == OFFER
    assert delivered["email.opened"]["data"]["unique"] is True
    assert delivered["email.opened"]["data"]["analytics"]["device_type"] == "desktop"
    assert delivered["email.clicked"]["data"]["analytics"]["open_count"] == 1
    assert delivered["email.delivered"]["data"]["smtp_code"] == 250
    assert "smtp_code" not in delivered["email.sent"]["data"]  # queued: no answer yet

    strict = make_settings()  # private targets not allowed
    with pytest.raises(InvalidEndpoint, match="refused"):
        await create_endpoint(pool, tenant, receiver.url(), settings=strict)
    assert endpoint.id == await pool.fetchval(
        "SELECT public_id FROM webhooks ORDER BY id DESC LIMIT 1"
    )
