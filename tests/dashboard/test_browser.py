"""The dashboard in headless Chromium (Debian's package, driven by Playwright), against every
real component: the API, an MTA worker delivering test mode to the capture sink, and the
tracker. Screenshots of each page are written under the test's tmp path for review."""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from api.server import ApiServer
from mta.domains import add_domain
from mta.sink import start_sink
from penguinmails.config import Settings
from tests.dashboard.conftest import PASSWORD, make_user
from tests.helpers import Client, Receiver, free_port
from tracker.server import Tracker

TIMEOUT = 30_000  # ms, for what waits on the worker and the tracker


def contacts_csv(rows: int, bad: dict[int, str]) -> bytes:
    """`rows` contacts; the data rows numbered in `bad` (1-based) get that email instead."""
    out = io.StringIO()
    out.write("email,first_name,company,tags,plan\n")
    for i in range(1, rows + 1):
        email = bad.get(i, f"person{i}@dest.test")
        out.write(f"{email},Person {i},Co {i % 7},lead;csv,gold\n")
    return out.getvalue().encode()


async def test_the_dashboard_in_a_browser(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    client: Client,
    receiver: Receiver,
    page: Any,
    shots: Callable[[Any, str], Awaitable[None]],
    tmp_path: Path,
) -> None:
    tracker_port = free_port()
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        tracker={
            "listen": f"127.0.0.1:{tracker_port}",
            "base_url": f"http://127.0.0.1:{tracker_port}",
        },
        webhooks={"allow_private_targets": True},
    )
    sink = await start_sink(pool, settings, listen="127.0.0.1:0")
    host, port = sink.sockets[0].getsockname()[:2]
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
    await make_user(client, "ann@acme.test")
    await start_worker(
        make_settings(mta={"sandbox_sink": f"{host}:{port}"}, tracker=settings.tracker.model_dump())
    )
    try:
        async with (
            ApiServer(pool, settings, sequence_interval=None) as api,
            Tracker(pool, settings, dispatcher={"poll_interval": 0.05}),
        ):
            await _walk(api, page, shots, receiver, tracker_port)
    finally:
        sink.close()
        await sink.wait_closed()


async def _walk(
    api: ApiServer,
    page: Any,
    shots: Callable[[Any, str], Awaitable[None]],
    receiver: Receiver,
    tracker_port: int,
) -> None:
    base = api.url
    page.set_default_timeout(TIMEOUT)

    # No session: the login page, under 100 KB of transfer with everything it loads.
    loaded: list[Any] = []

    def keep(response: Any) -> None:
        loaded.append(response)

    page.on("response", keep)
    await page.goto(base + "/dashboard")
    assert page.url == base + "/dashboard/login"
    await page.wait_for_load_state("load")
    page.remove_listener("response", keep)
    sizes = [len(await r.body()) for r in loaded if r.status == 200]
    assert len(sizes) >= 3 and sum(sizes) < 100_000, sizes
    await shots(page, "01-login")
    await page.get_by_label("Email").fill("ann@acme.test")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(base + "/dashboard")
    banner = page.locator("#test-mode")
    assert "Test mode" in await banner.inner_text()
    await shots(page, "02-overview")

    # Create a campaign with the editor (its preview personalises for the first recipient).
    await page.get_by_role("link", name="Campaigns", exact=True).click()
    await page.get_by_label("Name", exact=True).fill("Spring launch")
    await page.get_by_label("From address", exact=True).fill("news@acme.test")
    await page.get_by_label("Subject", exact=True).fill("Hello {{first_name}}")
    # With an image of its own: a short html message without one gets no open pixel.
    await page.locator("#html").fill(
        '<p><img src="https://acme.test/logo.png" alt="Acme" width="120"></p>'
        '<p>Hi {{first_name}}, see <a href="https://acme.test/pricing">pricing</a></p>'
    )
    await page.locator("#recipients").fill("ann@dest.test, Ann")
    assert await page.locator("#preview-subject").inner_text() == "Hello Ann"
    preview = page.frame_locator("#preview")
    assert "Hi Ann" in await preview.locator("p").last.inner_text()
    # The content analysis lists its findings beside the preview, without leaving the page.
    await page.get_by_role("button", name="Check content").click()
    findings = page.locator("#finding-list")
    await findings.wait_for()
    assert "images with little text" in await findings.inner_text()
    assert await page.locator("#recipients").input_value() == "ann@dest.test, Ann"
    await shots(page, "03-campaign-editor")
    await page.get_by_role("button", name="Create draft").click()
    await page.wait_for_url(re.compile(r"/dashboard/campaigns/campaign_[0-9a-f]{32}$"))
    campaign_url = page.url
    await page.locator("#action-send").click()
    await page.wait_for_url(campaign_url)
    assert await page.locator("#campaign-status").inner_text() in ("sending", "completed")

    # The sandbox inbox shows it as it arrives (the page refreshes its list itself).
    await page.get_by_role("link", name="Sandbox inbox").click()
    message_link = page.get_by_role("link", name="Hello Ann")
    await message_link.wait_for()
    await shots(page, "04-sandbox-inbox")
    # Opening it loads the pixel from the real tracker (an image of the sandboxed frame);
    # the chart below shows the open it recorded.
    await message_link.click()
    await page.wait_for_url(re.compile(r"/dashboard/inbox/"))
    assert "pass" in await page.locator("#dkim").inner_text()
    frame = page.frame_locator("#message-html")
    links = await page.locator("#link-check").inner_text()
    assert f"pricing → http://127.0.0.1:{tracker_port}/c/" in links, links
    await shots(page, "05-sandbox-message")
    # Click the tracked link: it opens in a new tab through the tracker's redirect.
    async with page.context.expect_page() as popup_info:
        await frame.get_by_role("link", name="pricing").click()
    popup = await popup_info.value
    await popup.wait_for_load_state("commit")
    await popup.close()

    # The campaign's chart follows the open and the click.
    await page.goto(campaign_url)
    chart = page.locator("#chart")
    await page.wait_for_function(
        "() => { const c = document.getElementById('chart');"
        " return Number(c.dataset.opened) >= 1 && Number(c.dataset.clicked) >= 1; }",
        timeout=TIMEOUT,
    )
    assert await chart.locator("canvas").count() >= 1
    totals = await page.locator("#chart-totals").inner_text()
    assert "opened 1" in totals and "clicked 1" in totals, totals
    # Its top links count the click, by the URL it led to.
    await page.reload()
    links = await page.locator("#top-links tbody tr").all_inner_texts()
    assert [r.split("\t")[:3] for r in links] == [["https://acme.test/pricing", "1", "1"]], links
    await shots(page, "06-campaign-chart")

    # A sequence of two steps, made in its editor; its page shows its steps' results.
    await page.get_by_role("link", name="Campaigns", exact=True).click()
    await page.get_by_role("link", name="New sequence").click()
    await page.get_by_label("Name", exact=True).fill("Follow-ups")
    await page.locator("#step0_subject").fill("Checking in")
    await page.locator("#step0_html").fill("<p>Hello again</p>")
    await page.locator("#step0_variants").fill("A | 1\nB | 1 | Quick question")
    await page.locator("#step1_days").fill("3")
    await page.locator("#step1_html").fill("<p>One more note</p>")
    await page.get_by_role("button", name="Create sequence").click()
    await page.wait_for_url(re.compile(r"/dashboard/sequences/seq_"))
    assert await page.locator("#sequence-status").inner_text() == "active"
    assert await page.locator("#step-results tr[data-variant]").count() == 2
    await shots(page, "06b-sequence")

    # Import 1,000 contacts of which 3 are bad: the report names each line, nothing imported.
    await page.get_by_role("link", name="Contacts").click()
    bad = {10: "not-an-email", 500: "", 999: "person1@dest.test"}
    upload = {"name": "contacts.csv", "mimeType": "text/csv"}
    await page.get_by_label("CSV file").set_input_files(
        {**upload, "buffer": contacts_csv(1000, bad)}
    )
    await page.get_by_role("button", name="Import").click()
    report = page.locator("#import-report")
    await report.wait_for()
    text = await report.inner_text()
    assert "Nothing imported: 3 of 1000 rows need fixing" in text, text
    # The upload went through the page's script, its bar counting to the end.
    assert await page.locator("#import-status").inner_text() == "Uploaded 100%"
    rows = await report.locator("tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["11", "501", "1000"], rows
    assert "line 2" in rows[2]  # the duplicate names its first line
    assert "No contacts yet." in await page.locator("#contacts").inner_text()
    await shots(page, "07-contacts-import-report")
    fixed = contacts_csv(1000, {})
    await page.get_by_label("CSV file").set_input_files({**upload, "buffer": fixed})
    await page.get_by_role("button", name="Import").click()
    await page.get_by_text("Imported 1000 contacts").wait_for()
    assert await page.locator("#contacts tbody tr").count() == 50

    # Webhooks: add an endpoint, ping it, rotate its secret.
    await page.get_by_role("link", name="Developers", exact=True).click()
    await page.get_by_label("URL", exact=True).fill(receiver.url())
    await page.get_by_role("button", name="Add endpoint").click()
    first_secret = await page.locator("#new-secret").inner_text()
    assert first_secret.startswith("whsec_")
    await page.get_by_role("link", name=receiver.url()).click()
    await page.locator("#ping").click()
    assert "delivered" in await page.locator("#ping-result").inner_text()
    await page.locator("#rotate").click()
    rotated = await page.locator("#rotated-secret").inner_text()
    assert rotated.startswith("whsec_") and rotated != first_secret
    await shots(page, "08-webhook-rotated")
    await page.get_by_role("link", name="Developers", exact=True).click()
    await shots(page, "09-developers")
    for name, shot in (
        ("Deliverability", "10-deliverability"),
        ("Billing", "11-billing"),
    ):
        await page.get_by_role("link", name=name, exact=True).click()
        await shots(page, shot)
    assert await page.locator("#plan").inner_text() == "enterprise"

    # On a phone: nothing wider than the screen but the tables, which scroll in their box.
    await page.set_viewport_size({"width": 390, "height": 844})
    for path, shot in (("/dashboard", "12-phone-overview"), (campaign_url, "13-phone-campaign")):
        await page.goto(path if path.startswith("http") else base + path)
        wide = await page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, (path, wide)
        await shots(page, shot)
