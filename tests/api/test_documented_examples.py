"""The product documentation's HTTP examples, sent as written, answered as documented.

Every ```http block of `shared/spec/integration-api-overview.md` that is a request (a method
and a path) is read out of the document and sent to a real API server with a test key, as
a user copying it into curl would. The only changes are the document's own placeholders:
`{token}` becomes the key, and the example ids (`campaign_abc123`, `{campaign_id}`) become a
campaign made for the purpose; the body is otherwise sent byte for byte. Each answer must have
the fields the document shows, with the document's types (extra fields are ours).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api.server import ApiServer
from tests.helpers import Client

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "spec" / "integration-api-overview.md"
TEMPLATE_HTML = '<h1>Welcome, {{name | default: "friend"}}!</h1>'


@dataclass(frozen=True)
class Example:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def documented_requests() -> list[Example]:
    text = SPEC.read_text("utf-8")
    examples = []
    for block in re.findall(r"```http\n(.*?)```", text, re.DOTALL):
        head, _, body = block.partition("\n\n")
        first, *header_lines = head.splitlines()
        match = re.fullmatch(r"(GET|POST|PUT|PATCH|DELETE) (/\S+)", first.strip())
        if match is None:
            continue  # the OAuth authorize URL: a browser address, not an API request
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        examples.append(Example(match[1], match[2], headers, body.strip().encode()))
    return examples


EXAMPLES = documented_requests()


def test_the_document_has_the_examples_we_answer() -> None:
    found = {(e.method, e.path) for e in EXAMPLES}
    assert found == {
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/campaigns"),
        ("POST", "/api/v1/emails/send"),
        ("POST", "/api/v1/emails/send-bulk"),
        ("GET", "/api/v1/analytics/campaigns/{campaign_id}?period=7d"),
        ("POST", "/api/v1/ai/optimize-content"),
        ("POST", "/api/v1/webhooks"),
    }


def _example(method: str, path: str) -> Example:
    (found,) = [e for e in EXAMPLES if e.method == method and e.path.split("{")[0] == path]
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@pytest.fixture
async def sandbox(make_key: Any, api: ApiServer, http: aiohttp.ClientSession) -> Client:
    """What `penguinmails up` hands out: a test key of the enterprise sandbox tenant."""
    key = await make_key("sandbox", tier="enterprise", test=True)
    return Client(http, api.url + "/api/v1", key)


async def _send(client: Client, example: Example, **ids: str) -> Any:
    path, body = example.path, example.body
    for placeholder, value in ids.items():
        path = path.replace(placeholder, value)
        body = body.replace(placeholder.encode(), value.encode())
    headers = {
        name: value.replace("{token}", client.key or "") for name, value in example.headers.items()
    }
    assert set(headers) <= {"Authorization", "Content-Type"}
    return await client.request(
        example.method, path.removeprefix("/api/v1"), data=body or None, headers=headers
    )


def _envelope(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status == status, reply.body
    body = reply.body
    assert body["success"] is True
    assert body["meta"]["request_id"].startswith("req_") and body["meta"]["timestamp"]
    return dict(body["data"])


async def test_every_documented_request_works_as_written(
    sandbox: Client, http: aiohttp.ClientSession
) -> None:
    # The campaign example names template welcome_template; the login example, a user.
    made = await sandbox.post(
        "/templates",
        json={"id": "welcome_template", "name": "Welcome", "html": TEMPLATE_HTML},
    )
    assert made.status == 201, made.body
    user = await sandbox.post(
        "/users", json={"email": "user@example.com", "password": "secure_password"}
    )
    assert user.status == 201, user.body

    login = _envelope(await _send(sandbox, _example("POST", "/api/v1/auth/login")), 200)
    assert isinstance(login["access_token"], str) and login["token_type"] == "Bearer"

    campaign = _envelope(await _send(sandbox, _example("POST", "/api/v1/campaigns")), 201)
    assert re.fullmatch(r"campaign_[0-9a-f]{32}", campaign["id"])
    assert campaign["name"] == "Welcome Email Series" and campaign["status"] == "draft"
    assert campaign["settings"] == {
        "analytics_enabled": True,
        "ai_optimization": True,
        "track_opens": True,
        "track_clicks": True,
    }
    # The request's own html and text win over the template's, part by part.
    assert campaign["content"]["template_id"] == "welcome_template"
    assert campaign["content"]["html"] == "<h1>Welcome!</h1><p>Thank you for joining us.</p>"
    # settings.ai_optimization: the analysis, in the documented shape, content unchanged.
    ai_optimization = campaign["ai_optimization"]
    assert ai_optimization["enabled"] is True
    assert isinstance(ai_optimization["improvement_score"], float)
    assert isinstance(ai_optimization["suggestions"], list)

    sent = _envelope(await _send(sandbox, _example("POST", "/api/v1/emails/send")), 202)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", sent["message_id"])

    bulk = _envelope(
        await _send(
            sandbox, _example("POST", "/api/v1/emails/send-bulk"), campaign_abc123=campaign["id"]
        ),
        202,
    )
    assert bulk["campaign_id"] == campaign["id"] and bulk["queued"] == 1

    analytics = _envelope(
        await _send(
            sandbox,
            _example("GET", "/api/v1/analytics/campaigns/"),
            **{"{campaign_id}": campaign["id"]},
        ),
        200,
    )
    overview = analytics["overview"]
    assert all(_is_int(overview[name]) for name in ("sent", "delivered", "opened", "clicked"))
    assert overview["sent"] == 1
    revenue = analytics["revenue_impact"]
    assert revenue["total_value"] == "$0.00" and revenue["conversion_value"] == "$0.00"

    hook = _envelope(await _send(sandbox, _example("POST", "/api/v1/webhooks")), 201)
    assert re.fullmatch(r"wh_[0-9a-f]{32}", hook["id"])
    assert hook["url"] == "https://yourapp.com/webhooks/penguinmails"
    assert hook["events"] == ["email.sent", "email.delivered", "email.opened", "campaign.completed"]

    ai = _envelope(await _send(sandbox, _example("POST", "/api/v1/ai/optimize-content")), 200)
    assert ai["original"] == {
        "subject": "Don't miss our sale!",
        "html": "<h1>50% OFF Everything!</h1><p>Limited time offer.</p>",
        "text": None,
    }
    # Our optimized subject has no capitals and no excess punctuation; each change and
    # finding says why.
    subject = ai["optimized"]["subject"]
    assert not re.search(r"\b[A-Z]{3,}\b", subject) and not re.search(r"[!?]{2,}", subject)
    assert subject.count("!") <= 1
    assert ai["optimized"]["html"] == "<h1>50% Off Everything!</h1><p>Limited time offer.</p>"
    assert all(c["reason"] and c["made_by"] in ("rule", "model") for c in ai["changes"])
    found = {f["check"]: f for f in ai["findings"]}
    assert found["body_all_caps"]["evidence"] == ["OFF"]
    assert set(found["spam_phrases"]["evidence"]) == {"don't miss", "limited time", "% off"}
    improvements = ai["improvements"]
    for name in ("expected_open_rate_increase", "expected_click_rate_increase", "sentiment_score"):
        assert isinstance(improvements[name], float)
    assert improvements["estimate"]["method"] == "prior"  # a new account: no history


async def test_the_sdk_examples_json_is_accepted_too(sandbox: Client) -> None:
    """The SDK section's objects, as the JSON an SDK would send: content as a bare string."""
    email = {
        "to": "user@example.com",
        "subject": "Test Email",
        "content": "<p>Hello from PenguinMails!</p>",
        "tracking": {"track_opens": True, "track_clicks": True},
    }
    reply = await sandbox.post("/emails/send", json=email)
    assert reply.status == 202, reply.body
    assert reply.data["message_id"].startswith("msg_")
    campaign = {
        "name": "Welcome Series",
        "subject": "Welcome to PenguinMails!",
        "content": {
            "html": "<h1>Welcome!</h1><p>Thank you for joining us.</p>",
            "text": "Welcome! Thank you for joining us.",
        },
    }
    made = await sandbox.post("/campaigns", json=campaign)
    assert made.status == 201 and made.data["id"].startswith("campaign_")
