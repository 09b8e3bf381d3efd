"""The dashboard's doors over plain HTTP: no page without a session, one tenant's session
sees nothing of another's, every form refuses a POST without its CSRF token, and every
answer carries the strict Content-Security-Policy."""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from api.dashboard import CSP
from api.server import ApiServer
from mta.domains import add_domain
from mta.shaping import Automation, Scope
from mta.shared import SharedShaping
from penguinmails.cli import cmd_operators, cmd_status
from penguinmails.config import Settings
from penguinmails.sequences import schedule
from tests.dashboard.conftest import Browserless, make_user
from tests.helpers import Client, free_port, queue_messages, wait_for
from tests.stripe_fake import FakeStripe
from tracker.server import Tracker

PAGES = [
    "/dashboard",
    "/dashboard/campaigns",
    "/dashboard/contacts",
    "/dashboard/deliverability",
    "/dashboard/inbox",
    "/dashboard/developers",
    "/dashboard/settings/billing",
]
FORMS = [
    "/dashboard/logout",
    "/dashboard/campaigns",
    "/dashboard/campaigns/analyse",
    "/dashboard/contacts/import",
    "/dashboard/sequences",
    "/dashboard/developers/keys",
    "/dashboard/developers/webhooks",
    "/dashboard/deliverability/suppressions",
    "/dashboard/deliverability/suppressions/remove",
    "/dashboard/settings/billing/checkout",
    "/dashboard/settings/billing/portal",
]


@pytest.fixture
async def ann(
    api: ApiServer, client: Client, browserless: Callable[[str], Browserless]
) -> Browserless:
    user = await make_user(client, "ann@acme.test")
    session = browserless(api.url)
    await session.login(user["email"])
    return session


async def test_no_page_without_a_session(
    api: ApiServer, browserless: Callable[[str], Browserless]
) -> None:
    anonymous = browserless(api.url)
    for path in [*PAGES, "/dashboard/campaigns/campaign_" + "0" * 32]:
        status, headers, _ = await anonymous.request("GET", path)
        assert (status, headers["Location"]) == (303, "/dashboard/login"), path
        assert headers["Content-Security-Policy"] == CSP
    for path in FORMS:
        status, _, _ = await anonymous.request("POST", path, data={})
        assert status == 401, path
    # A forged or expired cookie is no session either.
    anonymous.cookies["__Host-pm_session"] = "eyJhbGciOiJub25lIn0.e30."
    status, headers, _ = await anonymous.request("GET", "/dashboard")
    assert (status, headers["Location"]) == (303, "/dashboard/login")


async def test_login_sets_a_secure_session_and_logout_ends_it(
    api: ApiServer, client: Client, browserless: Callable[[str], Browserless]
) -> None:
    await make_user(client, "ann@acme.test")
    session = browserless(api.url)
    token = await session.csrf()
    status, _, body = await session.request(
        "POST",
        "/dashboard/login",
        data={"email": "ann@acme.test", "password": "wrong password!", "csrf_token": token},
    )
    assert status == 401 and "Invalid email or password" in body
    assert "__Host-pm_session" not in session.cookies
    async with session.http.post(
        api.url + "/dashboard/login",
        data={
            "email": "ann@acme.test",
            "password": "correct horse battery staple",
            "csrf_token": token,
        },
        headers={"Cookie": f"__Host-pm_csrf={session.cookies['__Host-pm_csrf']}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        cookie = response.headers["Set-Cookie"]
        session._keep(response)
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    status, _, html = await session.request("GET", "/dashboard")
    assert status == 200 and 'id="test-mode"' in html  # a test-mode user sees the banner
    token = await session.csrf("/dashboard")
    status, headers, _ = await session.request(
        "POST", "/dashboard/logout", data={"csrf_token": token}
    )
    assert (status, headers["Location"]) == (303, "/dashboard/login")
    status, _, _ = await session.request("GET", "/dashboard")
    assert status == 303


async def test_every_form_refuses_a_post_without_its_token(ann: Browserless) -> None:
    good = await ann.csrf("/dashboard")
    for path in FORMS:
        for data in ({}, {"csrf_token": "0" * 64}):
            status, headers, body = await ann.request("POST", path, data=data)
            assert status == 403 and "CSRF" in body, (path, data)
            assert headers["Content-Security-Policy"] == CSP
    # The right token from another site's page is refused too.
    status, _, _ = await ann.request(
        "POST",
        "/dashboard/developers/keys",
        data={"csrf_token": good, "name": "x"},
        headers={"Origin": "https://evil.test"},
    )
    assert status == 403
    # Another browser's token does not fit this browser's cookie.
    ann.cookies["__Host-pm_csrf"] = "A" * 43
    status, _, _ = await ann.request(
        "POST", "/dashboard/developers/keys", data={"csrf_token": good}
    )
    assert status == 403
    # And nothing was made by any of it.
    status, _, html = await ann.request("GET", "/dashboard/developers")
    assert 'id="new-key"' not in html and html.count("<code>sk_") == 1  # the fixture's key only


async def test_strict_csp_on_every_page(ann: Browserless) -> None:
    for path in [*PAGES, "/dashboard/login", "/dashboard/static/dash.js"]:
        status, headers, html = await ann.request("GET", path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert csp == CSP
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        if path.endswith(".js"):
            continue
        # No inline script or handler anywhere in the markup.
        assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, path
        assert re.search(r"\son[a-z]+=", html) is None, path
        assert len(html.encode()) < 100_000


async def test_one_tenant_sees_nothing_of_another(
    api: ApiServer,
    client: Client,
    make_key: Callable[..., Awaitable[str]],
    ann: Browserless,
    browserless: Callable[[str], Browserless],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
    campaign = await client.post(
        "/campaigns",
        json={
            "name": "Acme secret launch",
            "subject": "Hi",
            "content": {"html": "<p>Hi</p>"},
            "recipients": [{"email": "zed@dest.test"}],
        },
    )
    assert campaign.status == 201
    await client.post("/contacts", json={"email": "acme-contact@dest.test"})
    await client.post("/suppressions", json={"email": "acme-suppressed@dest.test"})
    hook = await client.post("/webhooks", json={"url": "http://127.0.0.1:9/acme-hook"})
    other = client.with_key(await make_key("globex", tier="enterprise", test=True))
    await make_user(other, "gus@globex.test")
    gus = browserless(api.url)
    await gus.login("gus@globex.test")

    for path in PAGES:
        status, _, html = await gus.request("GET", path)
        assert status == 200
        for secret in ("Acme secret launch", "acme-contact@", "acme-suppressed@", "acme-hook"):
            assert secret not in html, (path, secret)
    # Ann sees her own, so the absence above means something.
    _, _, html = await ann.request("GET", "/dashboard/campaigns")
    assert "Acme secret launch" in html
    for path in (
        f"/dashboard/campaigns/{campaign.data['id']}",
        f"/dashboard/campaigns/{campaign.data['id']}/series.json",
        f"/dashboard/developers/webhooks/{hook.data['id']}",
        "/dashboard/deliverability/domain?domain=acme.test",
    ):
        status, _, html = await gus.request("GET", path)
        assert status == 404 and "Acme" not in html, path
    token = await gus.csrf("/dashboard")
    for action in ("send", "cancel"):
        status, _, _ = await gus.request(
            "POST",
            f"/dashboard/campaigns/{campaign.data['id']}/{action}",
            data={"csrf_token": token},
        )
        assert status == 404
    status, _, _ = await gus.request(
        "POST",
        f"/dashboard/developers/webhooks/{hook.data['id']}/rotate",
        data={"csrf_token": token},
    )
    assert status == 404
    assert (await client.get(f"/campaigns/{campaign.data['id']}")).data["status"] == "draft"


async def test_the_system_page_shows_the_status_numbers_to_operators_only(
    api: ApiServer,
    client: Client,
    settings: Settings,
    ann: Browserless,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent = await client.post(
        "/emails/send",
        json={
            "from": {"email": "news@acme.test"},
            "to": ["zed@later.test"],
            "subject": "Queued",
            "content": {"text": "Hello"},
        },
    )
    assert sent.status in (200, 201, 202), sent.body
    status, _, html = await ann.request("GET", "/dashboard/system")
    assert status == 404
    _, _, html = await ann.request("GET", "/dashboard")
    assert "/dashboard/system" not in html

    def operators(action: str, email: str) -> argparse.Namespace:
        return argparse.Namespace(action=action, email=email, tenant="acme", test=True)

    assert await cmd_operators(settings, operators("grant", "nobody@acme.test")) == 1
    assert await cmd_operators(settings, operators("grant", "ann@acme.test")) == 0
    _, _, html = await ann.request("GET", "/dashboard")
    assert 'href="/dashboard/system"' in html
    status, headers, html = await ann.request("GET", "/dashboard/system")
    assert status == 200 and headers["Content-Security-Policy"] == CSP
    capsys.readouterr()
    assert await cmd_status(settings, argparse.Namespace()) == 0
    printed = capsys.readouterr().out
    # The CLI's lines and the page's rows: the same numbers.
    cli_totals = dict(re.findall(r"^(\w+) +(\d+) *$", printed, re.M))
    page_totals = dict(re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td></tr>", html))
    assert page_totals == cli_totals == {"queued": "1"}, (printed, page_totals)
    assert "later.test" in html and "later.test" in printed
    assert await cmd_operators(settings, operators("revoke", "ann@acme.test")) == 0
    status, _, _ = await ann.request("GET", "/dashboard/system")
    assert status == 404


async def test_a_template_campaign_scheduled_paused_resumed_and_cancelled(
    client: Client, ann: Browserless
) -> None:
    made = await client.post(
        "/templates",
        json={"name": "Welcome", "subject": "Welcome {{first_name}}", "html": "<p>Hi</p>"},
    )
    assert made.status == 201, made.body
    template = made.data["id"]
    _, _, html = await ann.request("GET", "/dashboard/campaigns")
    assert f'<option value="{template}">Welcome (v1)</option>' in html
    token = await ann.csrf("/dashboard/campaigns")
    status, headers, body = await ann.request(
        "POST",
        "/dashboard/campaigns",
        data={
            "csrf_token": token,
            "name": "From a template",
            "from_email": "news@acme.test",
            "template_id": template,
            "recipients": "zed@dest.test, Zed\nyan@dest.test, Yan",
        },
    )
    assert status == 303, body
    campaign_id = headers["Location"].rsplit("/", 1)[1]
    campaign = (await client.get(f"/campaigns/{campaign_id}")).data
    assert campaign["content"]["template_id"] == template
    assert campaign["recipient_count"] == 2

    async def act(action: str, **form: str) -> str:
        status, _, body = await ann.request(
            "POST",
            f"/dashboard/campaigns/{campaign_id}/{action}",
            data={"csrf_token": token, **form},
        )
        assert status == 303, body
        return str((await client.get(f"/campaigns/{campaign_id}")).data["status"])

    assert await act("send", send_at="2099-01-02T03:04") == "scheduled"
    assert (
        (await client.get(f"/campaigns/{campaign_id}"))
        .data["send_at"]
        .startswith("2099-01-02T03:04:00")
    )
    assert await act("pause") == "paused"
    assert await act("resume") == "scheduled"
    assert await act("cancel") == "cancelled"
    # A refused action is shown, not done: a cancelled campaign cannot be sent.
    status, _, body = await ann.request(
        "POST", f"/dashboard/campaigns/{campaign_id}/send", data={"csrf_token": token}
    )
    assert status == 409 and "draft" in body


async def test_contacts_export_as_csv(client: Client, ann: Browserless) -> None:
    for i in range(105):  # more than one page of the API's list
        made = await client.post(
            "/contacts",
            json={"email": f"c{i}@dest.test", "first_name": f"C{i}", "tags": ["vip"]},
        )
        assert made.status == 201
    await client.post("/contacts", json={"email": "plain@dest.test"})
    status, headers, text = await ann.request("GET", "/dashboard/contacts/export.csv?tag=vip")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 105 and {r["tags"] for r in rows} == {"vip"}
    assert {r["email"] for r in rows} == {f"c{i}@dest.test" for i in range(105)}
    _, _, text = await ann.request("GET", "/dashboard/contacts/export.csv")
    assert "plain@dest.test" in text and len(list(csv.DictReader(io.StringIO(text)))) == 106


async def test_content_analysis_beside_the_editor(
    api: ApiServer,
    client: Client,
    make_key: Callable[..., Awaitable[str]],
    ann: Browserless,
    browserless: Callable[[str], Browserless],
) -> None:
    _, _, html = await ann.request("GET", "/dashboard/campaigns")
    assert 'id="analyse"' in html and 'formaction="/dashboard/campaigns/analyse"' in html
    token = await ann.csrf("/dashboard/campaigns")
    form = {
        "csrf_token": token,
        "name": "Loud",
        "subject": "FREE MONEY!!! Hello {{first_name}}",
        "html": "<p>Hi {{first_name}}, see <a href='https://acme.test/p'>pricing</a></p>",
        "recipients": "zed@dest.test, Zed",
    }
    status, _, html = await ann.request("POST", "/dashboard/campaigns/analyse", data=form)
    assert status == 200, html
    findings = html.split('id="finding-list"')[1].split("</ul>")[0]
    assert "capitals read as shouting" in findings and "severity-high" in findings
    changes = html.split('id="change-list"')[1].split("</ul>")[0]
    assert "FREE MONEY!!! Hello {{first_name}}" in changes
    assert "Free Money! Hello {{first_name}}" in changes
    # The editor keeps what was typed, and nothing was created.
    assert 'value="FREE MONEY!!! Hello {{first_name}}"' in html
    assert (await client.get("/campaigns")).data["items"] == []
    # No subject: the API's validation names the field, shown where the findings go.
    status, _, html = await ann.request(
        "POST", "/dashboard/campaigns/analyse", data={**form, "subject": ""}
    )
    assert status == 422 and "content.subject" in html.split('id="findings"')[1]

    # Below the professional tier: a note instead of the button, and the route refuses.
    small = client.with_key(await make_key("small", tier="starter", test=True))
    await make_user(small, "sam@small.test")
    sam = browserless(api.url)
    await sam.login("sam@small.test")
    _, _, html = await sam.request("GET", "/dashboard/campaigns")
    assert 'id="analyse"' not in html
    assert "Content analysis comes with the professional tier." in html
    token = await sam.csrf("/dashboard/campaigns")
    status, _, html = await sam.request(
        "POST", "/dashboard/campaigns/analyse", data={**form, "csrf_token": token}
    )
    assert status == 403 and "professional" in html and 'id="finding-list"' not in html


async def test_sequences_created_edited_enrolled_and_their_results(
    api: ApiServer,
    client: Client,
    make_key: Callable[..., Awaitable[str]],
    ann: Browserless,
    browserless: Callable[[str], Browserless],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
    identity = await client.post("/identities", json={"email": "bob@acme.test", "name": "Bob"})
    assert identity.status == 201, identity.body
    _, _, html = await ann.request("GET", "/dashboard/campaigns")
    assert 'href="/dashboard/sequences/new"' in html
    status, _, html = await ann.request("GET", "/dashboard/sequences/new")
    assert status == 200 and 'id="step0_subject"' in html and "bob@acme.test" in html
    token = await ann.csrf("/dashboard/sequences/new")
    form = {
        "csrf_token": token,
        "name": "Onboarding",
        "from_email": "news@acme.test",
        "step0_subject": "Welcome to Acme",
        "step0_html": "<p>Hi there</p>",
        "step0_variants": "A | 3 | Welcome aboard\nB | 1",
        "step1_days": "2",
        "step1_business": "1",
        "step1_html": "<p>Any questions?</p>",
        "window_days": ["mon", "tue", "wed"],
        "window_start": "09:00",
        "window_end": "17:00",
        "window_timezone": "Europe/Berlin",
        "identities": identity.data["id"],
        "stop_reply": "1",
        "stop_click": "1",
        "track_opens": "1",
        "track_clicks": "1",
        "winner_by": "reply_rate",
        "min_sample": "50",
        "wait_hours": "6",
    }
    # A refusal names the field and keeps what was typed.
    status, _, html = await ann.request(
        "POST", "/dashboard/sequences", data={**form, "window_end": "08:00"}
    )
    assert status == 422 and "window" in html and 'value="Welcome to Acme"' in html
    status, headers, html = await ann.request("POST", "/dashboard/sequences", data=form)
    assert status == 303, html
    seq_id = headers["Location"].rsplit("/", 1)[1]
    seq = (await client.get(f"/sequences/{seq_id}")).data
    assert [s["delay"] for s in seq["steps"]] == [
        {"days": 0, "business_days": False, "hours": 0},
        {"days": 2, "business_days": True, "hours": 0},
    ]
    assert seq["steps"][1]["subject"] is None
    assert [(v["name"], v["weight"], v["subject"]) for v in seq["steps"][0]["variants"]] == [
        ("A", 3, "Welcome aboard"),
        ("B", 1, None),
    ]
    assert seq["window"]["days"] == ["mon", "tue", "wed"]
    assert seq["window"]["timezone"] == "Europe/Berlin"
    assert seq["settings"]["identities"] == [identity.data["id"]]
    assert seq["stop_on"]["click"] is True and seq["ab_test"]["winner_by"] == "reply_rate"

    # Its page shows the stored sequence in the editor, with a blank step to add.
    status, _, html = await ann.request("GET", f"/dashboard/sequences/{seq_id}")
    assert status == 200
    assert "A | 3 | Welcome aboard\nB | 1</textarea>" in html
    assert 'id="step2_subject"' in html and 'id="step3_subject"' not in html
    assert f'value="{identity.data["id"]}" checked' in html
    # Edit: a third step in the blank slot, no window any more.
    edit = {**form, "step2_hours": "5", "step2_html": "<p>Last note</p>"}
    edit.update(window_start="", window_end="", winner_by="", step0_variants="A | 1\nB | 1")
    status, _, html = await ann.request("POST", f"/dashboard/sequences/{seq_id}", data=edit)
    assert status == 303, html
    seq = (await client.get(f"/sequences/{seq_id}")).data
    assert len(seq["steps"]) == 3 and seq["steps"][2]["delay"]["hours"] == 5
    assert seq["window"] is None and seq["ab_test"] is None
    assert [(v["name"], v["weight"]) for v in seq["steps"][0]["variants"]] == [("A", 1), ("B", 1)]

    # Enrol two addresses; the first step is queued; the page's results are the API's.
    status, _, html = await ann.request(
        "POST",
        f"/dashboard/sequences/{seq_id}/enroll",
        data={"csrf_token": token, "contacts": "zed@dest.test\nyan@dest.test"},
    )
    assert status == 303, html
    await schedule(pool)  # whatever the API's own scheduler has not queued yet
    _, _, html = await ann.request("GET", f"/dashboard/sequences/{seq_id}")
    listed = html.split('id="enrollment-list"')[1].split("</table>")[0]
    assert "zed@dest.test" in listed and "yan@dest.test" in listed
    stats = (await client.get(f"/sequences/{seq_id}/analytics")).data
    assert stats["steps"][0]["queued"] == 2
    row = re.search(r'<tr data-step="1"><td>1</td><td>all</td><td>(\d+) / (\d+)</td>', html)
    assert row and row.groups() == (str(stats["steps"][0]["queued"]), "0")
    # Each variant's row: the messages made with it (the two between A and B).
    variants = dict(
        re.findall(
            r'<tr data-step="1" data-variant="(\w)"><td>1</td><td>\w \(weight 1\)</td><td>(\d+) /',
            html,
        )
    )
    assert variants == {v["name"]: str(v["sent"]) for v in stats["steps"][0]["variants"]}
    assert sum(map(int, variants.values())) == 2
    enrollments = (await client.get(f"/sequences/{seq_id}/enrollments")).data["items"]
    zed = next(e for e in enrollments if e["email"] == "zed@dest.test")
    status, _, _ = await ann.request(
        "POST",
        f"/dashboard/sequences/{seq_id}/enrollments/{zed['id']}/stop",
        data={"csrf_token": token},
    )
    assert status == 303
    _, _, html = await ann.request("GET", f"/dashboard/sequences/{seq_id}?status=stopped")
    listed = html.split('id="enrollment-list"')[1].split("</table>")[0]
    assert "zed@dest.test" in listed and "(manual)" in listed and "yan@" not in listed

    # Another tenant sees none of it.
    other = client.with_key(await make_key("globex", tier="enterprise", test=True))
    await make_user(other, "gus@globex.test")
    gus = browserless(api.url)
    await gus.login("gus@globex.test")
    status, _, html = await gus.request("GET", f"/dashboard/sequences/{seq_id}")
    assert status == 404 and "Onboarding" not in html
    gus_token = await gus.csrf("/dashboard")
    status, _, _ = await gus.request(
        "POST", f"/dashboard/sequences/{seq_id}/archive", data={"csrf_token": gus_token}
    )
    assert status == 404
    status, headers, _ = await ann.request(
        "POST", f"/dashboard/sequences/{seq_id}/archive", data={"csrf_token": token}
    )
    assert status == 303
    assert (await client.get(f"/sequences/{seq_id}")).data["status"] == "archived"


async def test_deliverability_rates_against_the_limits(
    client: Client, ann: Browserless, pool: asyncpg.Pool, settings: Settings
) -> None:
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
        await add_domain(conn, settings, "news.acme.test", tenant="acme")
    _, _, html = await ann.request("GET", "/dashboard/deliverability")
    assert "Nothing delivered or bounced in the window." in html
    ids = []
    for sender, count in (("a@acme.test", 1000), ("b@news.acme.test", 20)):
        made = await client.post(
            "/campaigns",
            json={
                "name": sender,
                "from": sender,
                "subject": "Hi",
                "content": {"html": "<p>Hi</p>"},
                "recipients": [{"email": f"r{i}@dest.test"} for i in range(count)],
            },
        )
        assert made.status == 201, made.body
        assert (await client.post(f"/campaigns/{made.data['id']}/send")).status == 202
        ids.append(made.data["id"])
    # What the receiving servers said, as the MTA and the feedback loop record it: 1000 from
    # acme.test, 10 bounced and 4 complaints (0.40%, over the 0.3%); 20 from news.acme.test,
    # 5 bounced (25%, over the breaker's 5%).
    outcomes = [("a@acme.test", "email.bounced", 10), ("a@acme.test", "email.delivered", 990)]
    outcomes += [("a@acme.test", "email.complained", 4), ("b@news.acme.test", "email.bounced", 5)]
    outcomes += [("b@news.acme.test", "email.delivered", 15)]
    for sender, kind, count in outcomes:
        await pool.execute(
            "INSERT INTO events (tenant_id, message_id, campaign_id, type)"
            " SELECT tenant_id, id, campaign_id, $2 FROM messages WHERE from_email = $1"
            " ORDER BY id LIMIT $3",
            sender,
            kind,
            count,
        )
    _, _, html = await ann.request("GET", "/dashboard/deliverability")
    table = html.split('id="rates"')[1].split("</table>")[0]
    rows = re.findall(r'<tr data-scope="(\w+)"><td>([^<]+)</td><td>([^<]+)</td>(.*?)</tr>', table)
    assert [(scope, name, attempted) for scope, name, attempted, _ in rows] == [
        ("tenant", "all sending", "1020"),
        ("domain", "acme.test", "1000"),
        ("domain", "news.acme.test", "20 (under the breaker's sample)"),
    ]
    cells = {name: rest for _, name, _, rest in rows}
    assert '"within">1.47%</td>' in cells["all sending"]  # 15 of 1020
    assert "0.398% over Gmail" in cells["all sending"]  # 4 of 1005 delivered
    assert '"within">1.00%</td>' in cells["acme.test"]
    assert "0.404% over Gmail" in cells["acme.test"]
    assert '"over">25.00% over the limit' in cells["news.acme.test"]
    assert '"within">0.000%' in cells["news.acme.test"]
    assert "bounces 5.00% and complaints 0.30%" in html


async def test_the_system_page_shows_sites_shaping_holds_and_each_role_s_health(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    start_api: Callable[..., Awaitable[ApiServer]],
    start_worker: Any,
    client: Client,
    browserless: Callable[[str], Browserless],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tracker_port, silent_port = free_port(), free_port()
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        tracker={"listen": f"127.0.0.1:{tracker_port}", "metrics_listen": ""},
        mta={"metrics_listen": f"127.0.0.1:{silent_port}"},  # configured, nothing there
        inbound={"metrics_listen": ""},
    )
    [first, *_] = await queue_messages(pool, ["a@acme.test", "b@acme.test", "c@plain.test"])
    shaping = SharedShaping(pool)
    google = "site:aspmx.l.google.com"
    await shaping.note_site(Scope("acme.test", google, "google"))
    rule = Automation(name="google-unusual-rate", action="suspend", scope="site", duration=600)
    await shaping.fire(rule, google, first, "421 4.7.28 unusual rate", {})
    api = await start_api(settings)
    await make_user(client, "ann@acme.test")
    ann = browserless(api.url)
    await ann.login("ann@acme.test")
    grant = argparse.Namespace(action="grant", email="ann@acme.test", tenant="acme", test=True)
    assert await cmd_operators(settings, grant) == 0
    async with Tracker(pool, settings):
        status, _, html = await ann.request("GET", "/dashboard/system")
        assert status == 200
        sites = html.split('id="sites"')[1].split("</table>")[0]
        assert f"<tr><td>{google}</td><td>google</td><td>2</td>" in sites
        assert "<tr><td>domain:plain.test</td><td>-</td><td>1</td>" in sites
        held = html.split('id="held"')[1].split("</table>")[0]
        assert google in held and "google-unusual-rate" in held and "421 4.7.28" in held
        assert _health(html) == {
            "api": "ok",
            "tracker": "ok",
            "mta": "no answer: ClientConnectorError",
            "inbound": "no health address configured",
            "mta-workers": "0 live",
        }
        assert f"http://127.0.0.1:{tracker_port}/healthz" in html
        # The CLI prints the same sites and holds, from the same queries.
        capsys.readouterr()
        assert await cmd_status(settings, argparse.Namespace()) == 0
        printed = capsys.readouterr().out
        assert re.search(rf"^{re.escape(google)} +google +2 +0 +0 *$", printed, re.M), printed
        assert "google-unusual-rate" in printed
        # A running worker counts by its presence heartbeat.
        await start_worker(make_settings(mta={"metrics_listen": "", "sandbox": True}))
        await wait_for(lambda: _live_workers(pool), timeout=10)
        _, _, html = await ann.request("GET", "/dashboard/system")
        assert _health(html)["mta-workers"] == "1 live"
    # The tracker gone, its health says so.
    _, _, html = await ann.request("GET", "/dashboard/system")
    assert _health(html)["tracker"] == "no answer: ClientConnectorError"


def _health(html: str) -> dict[str, str]:
    return dict(
        re.findall(r'<tr data-role="([\w-]+)"><td>[\w ]+</td><td class="\w*">([^<]+)</td>', html)
    )


async def _live_workers(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM mta_processes"))


async def test_developers_see_keys_last_use_and_retry_a_cancelled_delivery(
    client: Client, ann: Browserless, pool: asyncpg.Pool, key: str
) -> None:
    made = (await client.post("/api-keys", json={"name": "unused"})).data
    _, _, html = await ann.request("GET", "/dashboard/developers")
    rows = {
        prefix: used
        for prefix, used in re.findall(
            r'<code>(sk_test_\w+)</code>.*?<td class="last-used">([^<]+)</td>', html
        )
    }
    assert rows[made["prefix"]] == "never"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", rows[key[:20]])  # the client's own key

    hook = (await client.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"})).data
    tenant = await pool.fetchval("SELECT tenant_id FROM api_keys WHERE prefix = $1", key[:20])
    await pool.execute(
        "INSERT INTO events (tenant_id, type, data) VALUES ($1, 'campaign.completed', '{}')",
        tenant,
    )
    # Disabling the endpoint cancels its backlog; once enabled, the page offers a retry.
    await client.post(f"/webhooks/{hook['id']}/disable")
    page = f"/dashboard/developers/webhooks/{hook['id']}"
    _, _, html = await ann.request("GET", page)
    assert "cancelled" in html and "Retry delivery" not in html and "is disabled" in html
    await client.post(f"/webhooks/{hook['id']}/enable")
    _, _, html = await ann.request("GET", page)
    found = re.search(
        r'action="(/dashboard/developers/webhooks/wh_\w+/deliveries/(whd_\w+)/retry)"', html
    )
    assert found, html
    token = await ann.csrf(page)
    status, headers, _ = await ann.request("POST", found.group(1), data={"csrf_token": token})
    assert (status, headers["Location"]) == (303, page)
    [delivery] = (await client.get(f"/webhooks/{hook['id']}/deliveries")).data["items"]
    assert (delivery["id"], delivery["status"]) == (found.group(2), "pending")
    # Again: only a failed or cancelled one is retried, and the page says why not.
    status, _, html = await ann.request("POST", found.group(1), data={"csrf_token": token})
    assert status == 409 and "this one is pending" in html


async def test_billing_links_to_checkout_and_the_portal_when_configured(
    start_api: Callable[..., Awaitable[ApiServer]],
    make_settings: Callable[..., Settings],
    make_key: Callable[..., Awaitable[str]],
    http: Any,
    browserless: Callable[[str], Browserless],
) -> None:
    fake = await FakeStripe().start()
    try:
        settings = make_settings(
            api={"listen": "127.0.0.1:0"},
            billing={
                "secret_key": "sk_test_stripe_fake",
                "api_base": fake.url,
                "plans": {"pro": {"price": "price_1PenguinPro", "tier": "professional"}},
            },
        )
        api = await start_api(settings)
        live = Client(http, api.url + "/api/v1", await make_key("acme"))
        user = await make_user(live, "owner@acme.test")
        session = browserless(api.url)
        await session.login(user["email"])

        status, _, page = await session.request("GET", "/dashboard/settings/billing")
        assert status == 200 and "Subscribe to pro (professional)" in page
        token = await session.csrf()
        status, _, page = await session.request(
            "POST",
            "/dashboard/settings/billing/checkout",
            data={"plan": "pro", "csrf_token": token},
        )
        assert status == 200, page
        assert 'href="https://checkout.stripe.com/c/pay/cs_test_a1B2c3"' in page
        path, form, _ = fake.requests[-1]
        assert path == "/v1/checkout/sessions" and form["metadata[plan_id]"] == "pro"
        # Without a subscription yet, the portal has nothing to show: said on the page.
        status, _, page = await session.request(
            "POST", "/dashboard/settings/billing/portal", data={"csrf_token": token}
        )
        assert status == 404 and "subscribe through /billing/checkout first" in page
        # A POST without its token changes nothing at Stripe.
        before = len(fake.requests)
        status, _, _ = await session.request(
            "POST", "/dashboard/settings/billing/checkout", data={"plan": "pro"}
        )
        assert status == 403 and len(fake.requests) == before
    finally:
        assert fake.runner is not None
        await fake.runner.cleanup()
