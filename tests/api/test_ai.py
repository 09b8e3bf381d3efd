"""Content intelligence: POST /ai/optimize-content's rules, sentiment, estimate, SpamAssassin
and optional rewriting, and a campaign's `ai_optimization` summary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from api.server import ApiServer
from penguinmails.config import Settings
from tests.dns_server import NXDOMAIN, SERVFAIL, DNSServer
from tests.helpers import Client, campaign_keys, create_campaign
from tests.spamassassin import ensure_spamassassin

CLEAN = {
    "subject": "Quick question about your hiring plans",
    "text": "Hi Ann,\n\nAre you hiring engineers this quarter? We help teams like yours find "
    "them.\n\nBest,\nBob\n",
}


async def _optimize(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.post("/ai/optimize-content", json=body)
    assert reply.status == 200, reply.body
    return dict(reply.data)


async def test_a_clean_plain_message_gets_no_changes(client: Client) -> None:
    ensure_spamassassin()
    data = await _optimize(client, {"content": CLEAN})
    assert data["changes"] == []
    assert data["optimized"] == {**CLEAN, "html": None} == data["original"]
    # Nothing worse than a note: no visible unsubscribe link (the headers carry one).
    assert {f["severity"] for f in data["findings"]} <= {"info"}
    improvements = data["improvements"]
    assert improvements["expected_open_rate_increase"] == 0.0
    assert improvements["estimate"]["method"] == "prior"
    assert improvements["estimate"]["sample_size"] == 0
    assert -1 <= improvements["sentiment_score"] <= 1
    assert improvements["sentiment"]["compound"] == improvements["sentiment_score"]
    spam = data["spamassassin"]
    assert spam["available"] is True, spam
    assert spam["original"]["score"] < 1.0, spam


async def test_capitals_and_punctuation_are_fixed_with_their_rule(client: Client) -> None:
    data = await _optimize(
        client,
        {"content": {"subject": "FREE upgrade for your TEAM!!! Reply now!", "text": "Hi."}},
    )
    assert data["optimized"]["subject"] == "Free upgrade for your Team Reply now!"
    [change] = [c for c in data["changes"] if c["part"] == "subject"]
    assert change["made_by"] == "rule" and change["rule"] == "subject_case_and_punctuation"
    assert "FREE, TEAM" in change["reason"]
    checks = {f["check"]: f for f in data["findings"]}
    assert checks["subject_all_caps"]["evidence"] == ["FREE", "TEAM"]
    assert checks["subject_punctuation"]["evidence"] == ["!!!"]
    # Acronyms are ordinary: a subject about the CEO's ROI is left alone.
    plain = await _optimize(
        client, {"content": {"subject": "The CEO asked about ROI", "text": "x"}}
    )
    assert plain["changes"] == []


async def test_links_images_personalisation_and_the_pixel_are_reported(client: Client) -> None:
    html = (
        '<p>Hi {{first_name | default: ""}},</p>'
        '<p><a href="https://bit.ly/abc">pricing</a> and '
        '<a href="https://evil.test/login">https://bank.test/login</a> and '
        '<a href="https://acme.test/docs">acme.test/docs</a></p>'
    )
    data = await _optimize(
        client,
        {
            "content": {"subject": "Hello {{company}}", "html": html},
            "personalization": {"first_name": "Ann"},
        },
    )
    checks: dict[str, list[dict[str, Any]]] = {}
    for finding in data["findings"]:
        checks.setdefault(finding["check"], []).append(finding)
    assert checks["url_shortener"][0]["evidence"] == ["https://bit.ly/abc"]
    assert checks["mismatched_link_text"][0]["evidence"] == [
        "https://bank.test/login -> https://evil.test/login"
    ]
    # Its own address as text: click tracking would make it mismatch.
    assert checks["tracked_address_link"][0]["evidence"] == ["acme.test/docs"]
    assert checks["personalization_empty"][0]["evidence"] == ["first_name"]
    assert checks["personalization_missing"][0]["evidence"] == ["company"]
    assert "image-only" in checks["open_pixel_left_out"][0]["message"]
    assert checks["missing_text_part"][0]["part"] == "text"
    # The derived text part is offered as a change made by a rule.
    [text_change] = [c for c in data["changes"] if c["part"] == "text"]
    assert (
        text_change["rule"] == "text_part"
        and "pricing (https://bit.ly/abc)" in text_change["after"]
    )
    # A plain-text send has no pixel to leave out.
    plain = await _optimize(
        client,
        {"content": {"subject": "Hi", "html": "<p>Hi</p>"}, "tracking": {"plain_text": True}},
    )
    assert "open_pixel_left_out" not in {f["check"] for f in plain["findings"]}
    assert plain["optimized"]["html"] is None and plain["optimized"]["text"] == "Hi\n"


async def test_the_short_html_message_with_pixel_is_what_spamassassin_flags(
    client: Client,
) -> None:
    """SpamAssassin scores the message as the composer builds it: the short html alone has
    no pixel (left out), so no HTML_IMAGE_ONLY rule fires."""
    ensure_spamassassin()
    data = await _optimize(
        client,
        {"content": {"subject": "Hello Ann", "html": "<p>Hi Ann,</p><p>Quick question.</p>"}},
    )
    spam = data["spamassassin"]
    assert spam["available"] is True
    names = {r["name"] for r in spam["original"]["rules"]}
    assert not any(name.startswith("HTML_IMAGE_ONLY") for name in names), spam
    # With an image of its own and little text it is image-only, and SpamAssassin says so.
    image = await _optimize(
        client,
        {
            "content": {
                "subject": "Hello Ann",
                "html": '<p>Hi Ann,</p><img src="https://acme.test/a.png" alt="">',
            }
        },
    )
    rules = {r["name"]: r for r in image["spamassassin"]["original"]["rules"]}
    assert "HTML_IMAGE_ONLY_04" in rules and rules["HTML_IMAGE_ONLY_04"]["score"] > 1
    assert "image_to_text" in {f["check"] for f in image["findings"]}


async def test_the_estimate_comes_from_the_account_s_own_history(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    # 150 delivered messages with a shouting subject (15 opened), 150 without (45 opened).
    await pool.execute(
        "INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,"
        " subject, status, sandbox)"
        " SELECT $1, 'h' || i || '@acme.test', 'a@acme.test', 'r' || i || '@dest.test',"
        " 'dest.test', CASE WHEN i % 2 = 0 THEN 'BIG NEWS today' ELSE 'News today' END, 'sent',"
        " true"
        " FROM generate_series(1, 300) i",
        tenant_id,
    )
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, type, is_unique)"
        " SELECT tenant_id, id, 'email.opened', true FROM ("
        "   SELECT tenant_id, id, subject, row_number() OVER (PARTITION BY subject ORDER BY id) n"
        "   FROM messages WHERE tenant_id = $1) m"
        " WHERE (subject = 'BIG NEWS today' AND n <= 15) OR (subject = 'News today' AND n <= 45)",
        tenant_id,
    )
    data = await _optimize(client, {"content": {"subject": "BIG NEWS for you", "text": "Hi."}})
    improvements = data["improvements"]
    estimate = improvements["estimate"]
    assert estimate["method"] == "account_history" and estimate["sample_size"] == 300
    [evidence] = estimate["evidence"]
    assert evidence["feature"] == "all_caps"
    assert evidence["with_feature"]["delivered"] == 150 and evidence["with_feature"]["opened"] == 15
    assert evidence["without_feature"]["open_rate"] == 0.3
    assert improvements["expected_open_rate_increase"] == pytest.approx(0.2)
    # A clean subject removes nothing: no change is expected, on the same sample.
    clean = await _optimize(client, {"content": CLEAN})
    assert clean["improvements"]["expected_open_rate_increase"] == 0.0
    assert clean["improvements"]["estimate"]["method"] == "account_history"


async def test_optimisation_is_the_professional_tier_s(
    make_key: Callable[..., Awaitable[str]], api: ApiServer, http: aiohttp.ClientSession
) -> None:
    starter = Client(http, api.url + "/api/v1", await make_key("small", tier="starter"))
    reply = await starter.post("/ai/optimize-content", json={"content": CLEAN})
    assert reply.status == 403 and reply.body["error"]["code"] == "TIER_REQUIRED"


@pytest.fixture
async def fake_model() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[str]]]:
    """An OpenAI-compatible chat endpoint on loopback answering the subjects queued in
    `answers` (and recording what it was asked)."""
    asked: list[dict[str, Any]] = []
    answers: list[str] = []

    async def completions(request: web.Request) -> web.Response:
        asked.append(await request.json())
        content = answers.pop(0)
        return web.json_response(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1", asked, answers
    await runner.cleanup()


async def test_rewriting_by_a_configured_model_is_kept_only_when_it_passes(
    start_api: Callable[..., Awaitable[ApiServer]],
    make_settings: Callable[..., Settings],
    http: aiohttp.ClientSession,
    key: str,
    fake_model: tuple[str, list[dict[str, Any]], list[str]],
    client: Client,
) -> None:
    url, asked, answers = fake_model
    # Off by default: asked for, not used, and said why.
    off = await _optimize(client, {"content": CLEAN, "rewrite": True})
    assert off["rewriting"] == {
        "requested": True,
        "used": False,
        "model": None,
        "reason": "no language model is configured ([ai] rewrite_url)",
    }
    settings = make_settings(
        api={"listen": "127.0.0.1:0"}, ai={"rewrite_url": url, "rewrite_model": "local-test"}
    )
    server = await start_api(settings)
    with_model = Client(http, server.url + "/api/v1", key)
    answers.append(orjson.dumps({"subject": "A question about hiring at {{company}}"}).decode())
    body = {"content": {"subject": "Hiring at {{company}}?", "text": "Hi."}, "rewrite": True}
    data = await _optimize(with_model, body)
    assert asked[0]["model"] == "local-test"
    assert "Hiring at {{company}}?" in asked[0]["messages"][1]["content"]
    assert data["optimized"]["subject"] == "A question about hiring at {{company}}"
    [change] = data["changes"]
    assert change["made_by"] == "model" and change["rule"] == "local-test"
    assert data["rewriting"]["used"] is True
    # A shouting answer fails the checks and is not used.
    answers.append('{"subject": "HIRING at {{company}}!!!"}')
    refused = await _optimize(with_model, body)
    assert refused["optimized"]["subject"] == "Hiring at {{company}}?"
    assert refused["changes"] == [] and refused["rewriting"]["used"] is False
    assert "fails the checks" in refused["rewriting"]["reason"]


async def test_a_campaign_with_ai_optimization_gets_suggestions_and_keeps_its_content(
    client: Client,
) -> None:
    body = {
        "name": "Shouting",
        "subject": "BIG SALE!!!",
        "content": {"html": "<p>Act now</p>", "text": "Act now"},
        "settings": {"ai_optimization": True},
    }
    reply = await client.post("/campaigns", json=body)
    assert reply.status == 201, reply.body
    made = reply.data
    assert made["subject"] == "BIG SALE!!!" and made["content"]["html"] == "<p>Act now</p>"
    summary = made["ai_optimization"]
    assert summary["enabled"] is True and summary["changes_applied"] is False
    assert summary["improvement_score"] == 0.0 and summary["estimate"]["method"] == "prior"
    assert any("'BIG SALE!!!' -> 'Big Sale!'" in s for s in summary["suggestions"])
    assert any("act now" in s for s in summary["suggestions"])
    # Off: no analysis in the answer.
    quiet = await client.post("/campaigns", json={**body, "settings": {}})
    assert quiet.data["ai_optimization"] is None


async def test_ai_insights_name_the_subject_that_won_with_its_sample(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await create_campaign(
        client,
        recipients=[
            {
                "email": f"r{i}@{'gone.test' if i < 6 else 'dest.test'}",
                "personalization": {"first_name": "R"},
            }
            for i in range(80)
        ],
    )
    empty = await client.get(f"/analytics/campaigns/{made['id']}")
    assert empty.status == 200 and empty.data["ai_insights"] == {"recommendations": []}
    await client.post(f"/campaigns/{made['id']}/send")
    key, public_id = await campaign_keys(pool, made["id"])
    # Two subject variants of 37 delivered messages each (as an A/B test writes them), the
    # second opened far more; six messages to gone.test bounced.
    await pool.execute(
        "UPDATE messages SET status = CASE WHEN recipient LIKE '%@gone.test' THEN 'bounced'"
        " ELSE 'sent' END, sent_at = now(),"
        " subject = CASE WHEN id % 2 = 0 THEN 'Variant A' ELSE 'Variant B' END"
        " WHERE campaign_id = $1",
        key,
    )
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique)"
        " SELECT tenant_id, id, campaign_id, 'email.opened', true FROM ("
        "   SELECT *, row_number() OVER (PARTITION BY subject ORDER BY id) n FROM messages"
        "   WHERE campaign_id = $1 AND status = 'sent') m"
        " WHERE (subject = 'Variant A' AND n <= 5) OR (subject = 'Variant B' AND n <= 25)",
        key,
    )
    reply = await client.get(f"/analytics/campaigns/{public_id}")
    insights = {i["type"]: i for i in reply.data["ai_insights"]["recommendations"]}
    subject = insights["subject_line"]
    assert subject["evidence"]["winner"] == "Variant B"
    assert subject["evidence"]["sample"] == 37
    assert subject["evidence"]["significant"] is True
    assert [v["opened"] for v in subject["evidence"]["variants"]] == [25, 5]
    assert "'Variant B'" in subject["finding"] and "25/37" in subject["finding"]
    bounce = insights["recipient_domain"]
    assert bounce["evidence"] == {
        "domain": "gone.test",
        "attempted": 6,
        "bounced": 6,
        "bounce_rate": 1.0,
    }
    # 74 delivered messages are too few for send hours: nothing said.
    assert "send_time" not in insights


async def test_analyze_contact_derives_what_it_can_locally(
    start_api: Callable[..., Awaitable[ApiServer]],
    make_settings: Callable[..., Settings],
    http: aiohttp.ClientSession,
    key: str,
    dns_server: DNSServer,
    pool: asyncpg.Pool,
    tenant_id: int,
) -> None:
    dns_server.load(
        {
            "acme.test": {"MX": ["10 aspmx.l.google.com.", "20 alt1.aspmx.l.google.com."]},
            "gmail.com": {"MX": ["5 gmail-smtp-in.l.google.com."]},
            "own.test": {"MX": ["10 mx.own.test."]},
            "bare.test": {"A": ["192.0.2.1"]},
            "nomail.test": {"MX": ["0 ."]},
            "gone.test": NXDOMAIN,
            "broken.test": SERVFAIL,
        }
    )
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        mta={"dns_servers": [dns_server.address], "dns_timeout": 2.0},
    )
    server = await start_api(settings)
    client = Client(http, server.url + "/api/v1", key)

    async def analyse(body: dict[str, Any]) -> dict[str, Any]:
        reply = await client.post("/ai/analyze-contact", json=body)
        assert reply.status == 200, reply.body
        return dict(reply.data)

    sales = await analyse({"email": "Sales@acme.test"})
    assert sales["syntax_valid"] is True and sales["role_address"] is True
    assert sales["free_mail"] is False and sales["domain"] == "acme.test"
    assert sales["mx_hosts"] == ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
    assert sales["mx_provider"] == "Google" and sales["accepts_mail"] is True
    assert sales["enrichment"] == "local"
    person = await analyse({"email": "ann.lee@gmail.com"})
    assert person["role_address"] is False and person["free_mail"] is True
    own = await analyse({"email": "bob@own.test"})
    assert own["mx_provider"] is None and own["mx_hosts"] == ["mx.own.test"]
    assert (await analyse({"email": "bob@bare.test"}))["accepts_mail"] is True  # implicit MX
    assert (await analyse({"email": "bob@nomail.test"}))["accepts_mail"] is False  # null MX
    assert (await analyse({"email": "bob@gone.test"}))["accepts_mail"] is False
    broken = await analyse({"email": "bob@broken.test"})
    assert broken["accepts_mail"] is None and "MX lookup failed" in broken["dns_error"]
    bad = await analyse({"email": "not an address"})
    assert bad["syntax_valid"] is False and bad["domain"] is None

    # Past engagement with this account: a delivered message that was opened.
    await pool.execute(
        "INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,"
        " status, sandbox, sent_at) VALUES ($1, 'e1@acme.test', 'a@acme.test',"
        " 'ann.lee@gmail.com', 'gmail.com', 'sent', true, now())",
        tenant_id,
    )
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, type, is_unique)"
        " SELECT tenant_id, id, 'email.opened', true FROM messages"
        " WHERE message_id = 'e1@acme.test'"
    )
    again = await analyse({"email": "Ann.Lee@gmail.com"})
    engagement = again["engagement"]
    assert engagement["messages"] == 1 and engagement["delivered"] == 1
    assert engagement["opened"] == 1 and engagement["clicked"] == 0
    assert engagement["last_sent_at"] is not None

    # The SDK's own call (company and lifecycle stage, no address): nothing is made up.
    sdk = await analyse({"company": "Acme Corp", "lifecycleStage": "lead"})
    assert sdk["company"] == "Acme Corp" and sdk["lifecycle_stage"] == "lead"
    assert sdk["email"] is None and sdk["mx_provider"] is None and sdk["engagement"] is None
