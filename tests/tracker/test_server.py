"""The tracker over real HTTP: pixel, click, unsubscribe, health and metrics."""

from __future__ import annotations

import logging
import time

import asyncpg
import pytest

from penguinmails import conversions
from penguinmails.links import Links
from penguinmails.observability import start_ops_server
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from tracker.pages import PIXEL

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


def path_of(url: str) -> str:
    return url.removeprefix("http://tracker.test")


async def events(pool: asyncpg.Pool, kind: str | None = None) -> list[asyncpg.Record]:
    """What the tracker recorded (of `kind`): not the enqueue's `email.sent`."""
    return await pool.fetch(
        "SELECT * FROM events WHERE type <> 'email.sent' AND ($1::text IS NULL OR type = $1)"
        " ORDER BY id",
        kind,
    )


async def test_pixel_is_a_transparent_gif_that_records_an_open(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()

    async with http.get(
        tracker.url + path_of(links.open_url(message)), headers={"User-Agent": CHROME}
    ) as response:
        assert response.status == 200
        assert response.content_type == "image/gif"
        assert await response.read() == PIXEL
        assert "no-store" in response.headers["Cache-Control"]
        assert "no-cache" in response.headers["Cache-Control"]
        assert response.headers["Pragma"] == "no-cache"
    # The 200 was sent after the batch committed: no waiting needed.
    (opened,) = await events(pool, "email.opened")
    assert opened["message_id"] == message
    assert opened["campaign_id"] == 7
    assert opened["is_unique"] and not opened["is_machine"]
    assert opened["data"]["user_agent"] == CHROME
    assert opened["data"]["ip_prefix"] == "127.0.0.0/24"

    async with http.get(
        tracker.url + path_of(links.open_url(message)), headers={"User-Agent": CHROME}
    ) as response:
        assert response.status == 200
    second = (await events(pool, "email.opened"))[1]
    assert not second["is_unique"]


async def test_machine_opens_are_marked(pool, links, sent_messages, start_tracker, http):
    apple, google, fresh, human = await sent_messages(4)
    await pool.execute("UPDATE messages SET sent_at = now() WHERE id = $1", fresh)
    tracker = await start_tracker()
    for message, agent in [
        (apple, "Mozilla/5.0"),
        (
            google,
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
            "(via ggpht.com GoogleImageProxy)",
        ),
        (fresh, CHROME),
        (human, CHROME),
    ]:
        async with http.get(
            tracker.url + path_of(links.open_url(message)), headers={"User-Agent": agent}
        ) as response:
            assert response.status == 200
    rows = {r["message_id"]: r for r in await events(pool, "email.opened")}
    assert rows[apple]["data"]["machine_reason"] == "apple_mpp"
    assert rows[google]["data"]["machine_reason"] == "google_image_proxy"
    assert rows[fresh]["data"]["machine_reason"] == "soon_after_delivery"
    assert [rows[m]["is_machine"] for m in (apple, google, fresh, human)] == [
        True,
        True,
        True,
        False,
    ]
    assert all(r["is_unique"] for r in rows.values())


async def test_head_requests_are_served_but_not_counted(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    async with http.head(tracker.url + path_of(links.open_url(message))) as response:
        assert response.status == 200
    assert await events(pool) == []


async def test_click_redirects_to_the_signed_url_and_records_it(
    pool, links, settings, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    target = "https://acme.test/pricing?utm_source=mail&x=%C3%A9"
    url = tracker.url + path_of(links.click_url(message, 3, target))

    before = time.time()
    async with http.get(url, allow_redirects=False, headers={"User-Agent": CHROME}) as response:
        assert response.status == 302
        location = response.headers["Location"]
        assert "no-store" in response.headers["Cache-Control"]
    # The signed URL as it was, plus the click's conversion token for the landing page.
    assert location.startswith(target + "&pm_cv=")
    token = location.removeprefix(target + "&pm_cv=")
    named = conversions.verify(LinkSigner(server_keys(settings)), token, time.time())
    assert (named.queue_id, named.link_index) == (message, 3)
    assert before - 1 <= named.clicked_at <= time.time()
    (clicked,) = await events(pool, "email.clicked")
    assert clicked["message_id"] == message
    assert clicked["data"]["url"] == target
    assert clicked["data"]["link_index"] == 3
    assert clicked["is_unique"] and not clicked["is_machine"]


async def test_without_a_conversion_parameter_the_redirect_is_the_signed_url(
    pool, links, sent_messages, start_tracker, http, make_settings
):
    (message,) = await sent_messages()
    off = make_settings(
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test", "conversion_param": ""}
    )
    tracker = await start_tracker(off)
    target = "https://acme.test/pricing#plans"
    async with http.get(
        tracker.url + path_of(links.click_url(message, 0, target)), allow_redirects=False
    ) as response:
        assert response.status == 302 and response.headers["Location"] == target


async def test_scanner_clicks_soon_after_delivery_are_machine(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages(sent_seconds_ago=1.0)
    tracker = await start_tracker()
    url = tracker.url + path_of(links.click_url(message, 0, "https://acme.test/"))
    async with http.get(url, allow_redirects=False, headers={"User-Agent": CHROME}) as response:
        assert response.status == 302
    (clicked,) = await events(pool, "email.clicked")
    assert clicked["is_machine"]
    assert clicked["data"]["machine_reason"] == "soon_after_delivery"


def tamper(token: str, where: int) -> str:
    swapped = "A" if token[where] != "A" else "B"
    return token[:where] + swapped + token[where + 1 :]


@pytest.mark.parametrize("kind", ["open", "click", "unsubscribe"])
async def test_forged_or_tampered_tokens_get_404_and_record_nothing(
    kind, pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    good = {
        "open": links.open_url(message),
        "click": links.click_url(message, 0, "https://acme.test/"),
        "unsubscribe": links.unsubscribe_url(message),
    }[kind]
    prefix, token = good.rsplit("/", 1)
    forged_elsewhere = Links(LinkSigner([b"another-server-key"]), "http://tracker.test")
    other = {
        "open": forged_elsewhere.open_url(message),
        "click": forged_elsewhere.click_url(message, 0, "https://evil.test/"),
        "unsubscribe": forged_elsewhere.unsubscribe_url(message),
    }[kind].rsplit("/", 1)[1]
    wrong_purpose = links.open_url(message).rsplit("/", 1)[1].removesuffix(".gif")
    if kind == "open":
        wrong_purpose = links.unsubscribe_url(message).rsplit("/", 1)[1] + ".gif"
    candidates = [
        tamper(token, 2),
        tamper(token, token.index(".") + 2),
        other,
        wrong_purpose,
        "garbage",
        "a.b",
    ]
    for bad in candidates:
        url = tracker.url + path_of(f"{prefix}/{bad}")
        for method in ("GET", "POST") if kind == "unsubscribe" else ("GET",):
            async with http.request(
                method,
                url,
                allow_redirects=False,
                data={"List-Unsubscribe": "One-Click"} if method == "POST" else None,
            ) as response:
                assert response.status == 404, (bad, method)
                assert "Location" not in response.headers
    assert await events(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_unsubscribe_page_changes_nothing_and_one_click_post_suppresses(
    pool, links, sent_messages, start_tracker, http, tenant
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    url = tracker.url + path_of(links.unsubscribe_url(message))

    for _ in range(3):  # scanners and prefetchers fetch every link
        async with http.get(url) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
            assert '<form method="post">' in page
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await events(pool) == []

    # RFC 8058: the mail provider POSTs List-Unsubscribe=One-Click, form-encoded.
    for _ in range(2):  # providers retry; people double-click
        async with http.post(
            url,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 200
            assert "unsubscribed" in (await response.text()).lower()
    row = await pool.fetchrow("SELECT * FROM suppressions")
    assert (row["tenant_id"], row["email"], row["reason"], row["detail"]) == (
        tenant,
        "reader0@dest.test",
        "unsubscribed",
        "one-click",
    )
    (unsubscribed,) = await events(pool, "email.unsubscribed")
    assert unsubscribed["message_id"] == message
    assert unsubscribed["data"]["method"] == "one-click"


async def test_page_button_posts_multipart_and_unsubscribes(
    pool, links, sent_messages, start_tracker, http
):
    import aiohttp

    (message,) = await sent_messages()
    tracker = await start_tracker()
    form = aiohttp.FormData({"List-Unsubscribe": "One-Click"})
    form._is_multipart = True  # what some mail providers send
    async with http.post(
        tracker.url + path_of(links.unsubscribe_url(message)), data=form
    ) as response:
        assert response.status == 200
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1
    assert len(await events(pool, "email.unsubscribed")) == 1


async def test_unsubscribe_for_a_deleted_message_is_gone(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    await pool.execute("DELETE FROM messages WHERE id = $1", message)
    tracker = await start_tracker()
    async with http.post(tracker.url + path_of(links.unsubscribe_url(message))) as response:
        assert response.status == 410


async def test_healthz_says_only_ok_and_metrics_are_not_public(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    async with http.get(tracker.url + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with http.get(tracker.url + path_of(links.open_url(message))) as response:
        assert response.status == 200
    async with http.get(tracker.url + "/o/nonsense.gif") as response:
        assert response.status == 404
    async with http.get(tracker.url + "/metrics") as response:
        assert response.status == 404


async def test_metrics_are_served_on_the_ops_address(
    pool, links, sent_messages, start_tracker, http
):
    (message,) = await sent_messages()
    tracker = await start_tracker()
    async with http.get(tracker.url + path_of(links.open_url(message))) as response:
        assert response.status == 200
    async with http.get(tracker.url + "/o/nonsense.gif") as response:
        assert response.status == 404
    runner = await start_ops_server(tracker.ops_app(), "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    try:
        async with http.get(f"http://{host}:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        async with http.get(f"http://{host}:{port}/healthz") as response:
            assert await response.json() == {"status": "ok"}
    finally:
        await runner.cleanup()
    assert 'penguinmails_tracker_hits_total{kind="open",result="ok"} 1.0' in text
    assert 'penguinmails_tracker_hits_total{kind="open",result="bad_token"} 1.0' in text
    assert "penguinmails_tracker_hits_recorded_total 1.0" in text
    assert 'penguinmails_webhook_backlog{status="pending"} 0.0' in text
    assert "penguinmails_tracker_hit_buffer 0.0" in text


async def test_healthz_reports_an_unreachable_database_but_not_why(
    pool, settings, start_tracker, http, database_url, caplog
):
    from penguinmails.database import create_pool

    dead = await create_pool(database_url, min_size=1, max_size=1)
    await dead.close()
    from tracker.server import Tracker

    tracker = await Tracker(dead, settings, dispatch=False).start()
    try:
        with caplog.at_level(logging.WARNING, logger="penguinmails.observability"):
            async with http.get(tracker.url + "/healthz") as response:
                assert response.status == 503
                assert await response.json() == {"status": "unavailable"}
    finally:
        await tracker.close()
    (reason,) = [r for r in caplog.records if r.name == "penguinmails.observability"]
    assert reason.role == "tracker" and "closed" in reason.error


async def test_shutdown_flushes_buffered_hits(pool, links, sent_messages, start_tracker, http):
    messages = await sent_messages(5)
    # A long batch window: nothing is written until the buffer is full or the tracker stops.
    tracker = await start_tracker(recorder={"interval": 30.0, "commit_wait": 0.05})
    for message in messages:
        async with http.get(tracker.url + path_of(links.open_url(message))) as response:
            assert response.status == 200
    assert await events(pool) == []
    await tracker.close()
    assert len(await events(pool, "email.opened")) == 5
