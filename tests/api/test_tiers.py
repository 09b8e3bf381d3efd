"""Plan tiers include features, as the documentation's table: below a route's tier, 403."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from api.routing import API
from api.server import ApiServer
from tests.helpers import Client, assert_error, campaign_body


async def test_each_tier_reaches_what_it_includes(
    api: ApiServer, http: aiohttp.ClientSession, make_key: Callable[..., Awaitable[str]]
) -> None:
    free = Client(http, api.url + "/api/v1", await make_key("tiny", tier="free", test=True))
    hook = {"url": "https://hooks.example.com/in", "events": ["email.opened"]}

    # Free: basic sending and drafts.
    sent = await free.post(
        "/emails/send", json={"to": "a@dest.test", "subject": "Hi", "content": "<p>Hi</p>"}
    )
    assert sent.status == 202, sent.body
    draft = await free.post("/campaigns", json=campaign_body(**{"from": "news@tiny.test"}))
    assert draft.status == 201, draft.body

    # Full sending (campaigns, bulk) is starter's; webhooks are professional's.
    error = assert_error(
        await free.post(f"/campaigns/{draft.data['id']}/send"), 403, "TIER_REQUIRED"
    )
    assert "starter" in error["message"] and error["details"] == [
        {"field": "tier", "message": "requires starter"}
    ]
    bulk = {"campaign_id": draft.data["id"], "recipients": [{"email": "b@dest.test"}]}
    assert_error(await free.post("/emails/send-bulk", json=bulk), 403, "TIER_REQUIRED")
    refused = await free.post("/webhooks", json=hook)
    assert "professional" in assert_error(refused, 403, "TIER_REQUIRED")["message"]
    # Refused before it is counted: a call the plan does not include spends no budget.
    assert "X-RateLimit-Remaining" not in refused.headers
    assert (await free.get("/webhooks")).status == 403

    # An upgrade (the same account, live and test alike) opens them at once.
    await make_key("tiny", tier="starter")
    assert (await free.post(f"/campaigns/{draft.data['id']}/send")).status == 202
    assert_error(await free.post("/webhooks", json=hook), 403, "TIER_REQUIRED")
    await make_key("tiny", tier="professional")
    assert (await free.post("/webhooks", json=hook)).status == 201


async def test_analytics_parts_follow_the_tier(
    api: ApiServer, http: aiohttp.ClientSession, make_key: Callable[..., Awaitable[str]]
) -> None:
    free = Client(http, api.url + "/api/v1", await make_key("tiny", tier="free", test=True))
    made = (await free.post("/campaigns", json=campaign_body(**{"from": "news@tiny.test"}))).data
    path = f"/analytics/campaigns/{made['id']}"

    limited = (await free.get(path)).data
    assert limited["overview"]["sent"] == 0 and limited["rates"]["open_rate"] == 0
    assert limited["engagement"] is None and limited["revenue_impact"] is None
    assert limited["left_out"] == {
        "engagement": "starter",
        "series": "starter",
        "links": "starter",
        "devices": "professional",
        "countries": "professional",
        "revenue_impact": "professional",
        "ai_insights": "professional",
    }
    await make_key("tiny", tier="starter")
    basic = (await free.get(path)).data
    assert basic["engagement"] is not None and basic["series"] is not None
    assert basic["links"] == [] and limited["links"] is None
    assert basic["devices"] is None and set(basic["left_out"]) == {
        "devices",
        "countries",
        "revenue_impact",
        "ai_insights",
    }
    await make_key("tiny", tier="professional")
    advanced = (await free.get(path)).data
    assert advanced["left_out"] == {} and advanced["revenue_impact"]["total_value"] == "$0.00"
    conversions = await free.get("/conversions")
    assert conversions.status == 200


async def test_conversions_are_professional(
    api: ApiServer, http: aiohttp.ClientSession, make_key: Callable[..., Awaitable[str]]
) -> None:
    starter = Client(http, api.url + "/api/v1", await make_key("mid", tier="starter", test=True))
    assert_error(await starter.get("/conversions"), 403, "TIER_REQUIRED")


async def test_the_openapi_document_names_each_routes_tier(client: Client) -> None:
    doc = (await client.get("/openapi.json", key=None)).body
    tiers = {
        (method.upper(), path): op["x-tier"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert tiers[("POST", "/api/v1/emails/send")] == "free"
    assert tiers[("POST", "/api/v1/emails/send-bulk")] == "starter"
    assert tiers[("POST", "/api/v1/webhooks")] == "professional"
    for op in API.operations:
        if op.tier != "free":
            assert "403" in doc["paths"]["/api/v1" + op.path][op.method.lower()]["responses"]
