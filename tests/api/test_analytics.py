"""Campaign analytics in the documented shape, from the rollups: the overview's integers,
engagement, rates, devices and countries, the series, revenue from conversions, the plan."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from penguinmails import conversions
from penguinmails.config import Settings
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from tests.helpers import Client, assert_error, campaign_keys, create_campaign

SQL = load("api", "analytics.sql")


async def _sent_campaign(
    client: Client, pool: asyncpg.Pool, count: int = 4
) -> tuple[str, list[int]]:
    """A campaign sent through the API (so each message is `email.sent` now): its public id
    and its messages' queue ids."""
    made = await create_campaign(
        client,
        recipients=[
            {"email": f"r{i}@dest.test", "personalization": {"first_name": "R"}}
            for i in range(count)
        ],
    )
    await client.post(f"/campaigns/{made['id']}/send")
    key, public_id = await campaign_keys(pool, made["id"])
    ids = [
        r["id"]
        for r in await pool.fetch("SELECT id FROM messages WHERE campaign_id = $1 ORDER BY id", key)
    ]
    return public_id, ids


async def _event(
    pool: asyncpg.Pool,
    message_id: int,
    kind: str,
    *,
    unique: bool = False,
    machine: bool = False,
    hours_ago: float = 0,
    data: dict[str, Any] | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique, is_machine,"
        " created_at, data)"
        " SELECT tenant_id, id, campaign_id, $2, $3, $4, now() - make_interval(hours => $5), $6"
        " FROM messages WHERE id = $1",
        message_id,
        kind,
        unique,
        machine,
        hours_ago,
        data or {},
    )


async def test_the_documented_shape_and_its_counts(client: Client, pool: asyncpg.Pool) -> None:
    campaign_id, ids = await _sent_campaign(client, pool)
    for m in ids[:3]:
        await _event(pool, m, "email.delivered", hours_ago=3)
    await _event(pool, ids[3], "email.deferred", hours_ago=4)
    await _event(pool, ids[3], "email.bounced", hours_ago=3)
    await _event(pool, ids[0], "email.opened", unique=True, machine=True, hours_ago=2)  # proxy
    await _event(pool, ids[0], "email.opened", hours_ago=1)  # the person, later
    await _event(pool, ids[1], "email.opened", unique=True, hours_ago=1)
    await _event(pool, ids[1], "email.clicked", unique=True, hours_ago=1)
    await _event(pool, ids[1], "email.replied", unique=True, hours_ago=1)
    await _event(pool, ids[2], "email.unsubscribed", unique=True, hours_ago=1)
    await _event(pool, ids[2], "email.delivered", hours_ago=24 * 30)  # outside 7d

    reply = await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "7d"})
    data = reply.data
    assert set(data) == {
        "campaign_id",
        "period",
        "interval",
        "since",
        "overview",
        "engagement",
        "rates",
        "devices",
        "countries",
        "series",
        "revenue_impact",
        "links",
        "ai_insights",
        "left_out",
        "livemode",
        "variants",
        "ab_winner",
    }
    assert (data["variants"], data["ab_winner"]) == ([], None)  # no A/B variants
    assert data["left_out"] == {}  # an enterprise key: nothing left out
    assert (data["campaign_id"], data["livemode"], data["interval"]) == (campaign_id, False, "day")
    assert data["overview"] == {
        "sent": 4,
        "delivered": 3,
        "opened": 2,
        "clicked": 1,
        "bounced": 1,
        "complained": 0,
        "unsubscribed": 1,
        "replied": 1,
        "recipients": 4,
        "deferred": 1,
        "suppressed": 0,
        "failed": 0,
    }
    assert data["engagement"] == {
        "opened": {"total": 3, "unique": 2, "human": 2, "unique_human": 1},
        "clicked": {"total": 1, "unique": 1, "human": 1, "unique_human": 1},
    }
    rates = data["rates"]
    assert (rates["delivery_rate"], rates["bounce_rate"]) == (0.75, 0.25)
    assert rates["open_rate"] == round(2 / 3, 4) and rates["human_open_rate"] == round(1 / 3, 4)
    assert rates["click_to_open_rate"] == 0.5 and rates["reply_rate"] == round(1 / 3, 4)

    hourly = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "24h"})
    ).data
    assert hourly["interval"] == "hour"
    assert sum(p["delivered"] for p in hourly["series"]) == 3
    assert sum(p["sent"] for p in hourly["series"]) == 4
    assert sum(p["replied"] for p in hourly["series"]) == 1
    assert [p["bucket"] for p in hourly["series"]] == sorted(p["bucket"] for p in hourly["series"])
    lifetime = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    ).data
    assert lifetime["overview"]["delivered"] == 4 and lifetime["since"] is None


async def test_opens_and_clicks_by_device_and_country(client: Client, pool: asyncpg.Pool) -> None:
    campaign_id, ids = await _sent_campaign(client, pool, count=3)
    mobile_us = {"device_type": "mobile", "country_code": "us", "country": "United States"}
    await _event(pool, ids[0], "email.opened", unique=True, data=mobile_us)
    await _event(pool, ids[0], "email.opened", data={**mobile_us, "country_code": "US"})
    await _event(
        pool,
        ids[1],
        "email.opened",
        unique=True,
        machine=True,
        data={"device_type": "desktop", "country": "Germany"},
    )
    await _event(
        pool,
        ids[1],
        "email.clicked",
        unique=True,
        data={"device_type": "desktop", "country_code": "DE"},
    )
    await _event(pool, ids[2], "email.opened", unique=True)  # placed nowhere
    await _event(pool, ids[2], "email.clicked", unique=True, hours_ago=24 * 30, data=mobile_us)

    data = (await client.get(f"/analytics/campaigns/{campaign_id}")).data

    def hits(total: int, unique: int, human: int, unique_human: int) -> dict[str, int]:
        return {"total": total, "unique": unique, "human": human, "unique_human": unique_human}

    none = hits(0, 0, 0, 0)
    assert data["devices"] == [
        {"device_type": "desktop", "opened": hits(1, 1, 0, 0), "clicked": hits(1, 1, 1, 1)},
        {"device_type": "mobile", "opened": hits(2, 1, 2, 1), "clicked": none},
        {"device_type": "unknown", "opened": hits(1, 1, 1, 1), "clicked": none},
    ]
    assert data["countries"] == [
        {"country": "US", "opened": hits(2, 1, 2, 1), "clicked": none},
        {"country": "Germany", "opened": hits(1, 1, 0, 0), "clicked": none},
        {"country": "unknown", "opened": hits(1, 1, 1, 1), "clicked": none},
        {"country": "DE", "opened": none, "clicked": hits(1, 1, 1, 1)},
    ]
    engagement = data["engagement"]
    for dimension in ("devices", "countries"):
        for kind in ("opened", "clicked"):
            assert sum(d[kind]["total"] for d in data[dimension]) == engagement[kind]["total"]
    lifetime = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    ).data
    mobile = next(d for d in lifetime["devices"] if d["device_type"] == "mobile")
    assert mobile["clicked"]["total"] == 1  # the month-old click


async def test_top_links_by_the_clicks_the_tracker_recorded(
    client: Client, pool: asyncpg.Pool
) -> None:
    campaign_id, ids = await _sent_campaign(client, pool, count=3)
    pricing, docs = "https://acme.test/pricing", "https://acme.test/docs"
    await _event(pool, ids[0], "email.clicked", unique=True, data={"url": pricing})
    await _event(pool, ids[0], "email.clicked", data={"url": pricing})  # again: one message
    await _event(pool, ids[1], "email.clicked", unique=True, machine=True, data={"url": pricing})
    await _event(pool, ids[2], "email.clicked", unique=True, data={"url": docs})
    await _event(pool, ids[2], "email.clicked", hours_ago=24 * 30, data={"url": docs})
    await _event(pool, ids[1], "email.opened", unique=True, data={"url": docs})  # not a click

    def hits(total: int, unique: int, human: int, unique_human: int) -> dict[str, int]:
        return {"total": total, "unique": unique, "human": human, "unique_human": unique_human}

    week = (await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "7d"})).data
    assert week["links"] == [
        {"url": pricing, "clicked": hits(3, 2, 2, 1)},
        {"url": docs, "clicked": hits(1, 1, 1, 1)},
    ]
    lifetime = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    ).data
    assert [(link["url"], link["clicked"]["total"]) for link in lifetime["links"]] == [
        (pricing, 3),
        (docs, 2),
    ]


async def test_revenue_impact_from_the_campaign_s_conversions(
    client: Client, pool: asyncpg.Pool, settings: Settings
) -> None:
    campaign_id, ids = await _sent_campaign(client, pool, count=3)
    _, other = await _sent_campaign(client, pool, count=1)
    public = dict(await pool.fetch("SELECT id, public_id FROM messages"))
    signer = LinkSigner(server_keys(settings))

    async def convert(body: dict[str, Any], *, token_for: int | None = None) -> None:
        if token_for is not None:
            body = {**body, "token": conversions.issue(signer, token_for, 0, time.time())}
        reply = await client.post("/conversions", body)
        assert reply.status == 201, reply.body

    # Through the campaign's clicks: $500 and $270; reported by the shop's backend: $1,680,
    # EUR 10.50, a goal without a value, and $99 a month ago; another campaign's $5.
    await convert({"goal": "purchase", "value": "500"}, token_for=ids[0])
    await convert({"goal": "purchase", "value": 270}, token_for=ids[1])
    await convert({"message_id": public[ids[2]], "goal": "renewal", "value": "1680.00"})
    await convert(
        {"message_id": public[ids[2]], "goal": "purchase", "value": 10.5, "currency": "EUR"}
    )
    await convert({"message_id": public[ids[0]], "goal": "signup"})
    month_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    await convert(
        {"message_id": public[ids[1]], "goal": "purchase", "value": 99, "occurred_at": month_ago}
    )
    await convert({"message_id": public[other[0]], "goal": "purchase", "value": 5})

    week = (await client.get(f"/analytics/campaigns/{campaign_id}")).data
    assert week["revenue_impact"] == {
        "total_value": "$770.00",
        "conversion_value": "$2,450.00",
        "currency": "USD",
        "total_value_minor": 77000,
        "conversion_value_minor": 245000,
        "conversions": 5,
        "by_currency": [
            {
                "currency": "USD",
                "total_value": "$770.00",
                "conversion_value": "$2,450.00",
                "total_value_minor": 77000,
                "conversion_value_minor": 245000,
                "conversions": 3,
            },
            {
                "currency": "EUR",
                "total_value": "€0.00",
                "conversion_value": "€10.50",
                "total_value_minor": 0,
                "conversion_value_minor": 1050,
                "conversions": 1,
            },
        ],
    }
    assert sum(p["conversions"] for p in week["series"]) == 5
    lifetime = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    ).data["revenue_impact"]
    assert (lifetime["conversion_value"], lifetime["conversions"]) == ("$2,549.00", 6)

    # A campaign without conversions: zero, in USD.
    quiet, _ = await _sent_campaign(client, pool, count=1)
    nothing = (await client.get(f"/analytics/campaigns/{quiet}")).data["revenue_impact"]
    assert nothing == {
        "total_value": "$0.00",
        "conversion_value": "$0.00",
        "currency": "USD",
        "total_value_minor": 0,
        "conversion_value_minor": 0,
        "conversions": 0,
        "by_currency": [],
    }


async def test_the_campaign_is_named_by_its_public_id_in_the_caller_s_mode(
    client: Client, pool: asyncpg.Pool, make_key: Callable[..., Awaitable[str]]
) -> None:
    made = await create_campaign(client)
    key, public_id = await campaign_keys(pool, made["id"])
    assert (await client.get(f"/analytics/campaigns/{public_id}")).status == 200
    for wrong in (str(key), "4242", "campaign_" + "0" * 32, public_id.upper(), "msg_x"):
        assert_error(await client.get(f"/analytics/campaigns/{wrong}"), 404, "NOT_FOUND")
    live = client.with_key(await make_key("acme"))  # the same account, live mode
    assert_error(await live.get(f"/analytics/campaigns/{public_id}"), 404, "NOT_FOUND")
    other = client.with_key(await make_key("globex", test=True))
    assert_error(await other.get(f"/analytics/campaigns/{public_id}"), 404, "NOT_FOUND")
    for params in (
        {"period": "week"},
        {"period": "0d"},
        {"interval": "minute"},
        {"period": "9999d"},
    ):
        reply = await client.get(f"/analytics/campaigns/{public_id}", params=params)
        assert_error(reply, 422, "VALIDATION_ERROR")


async def test_rollup_keeps_the_read_small(client: Client, pool: asyncpg.Pool) -> None:
    """200,000 events over 30 days: analytics reads the rollups' primary keys, not events."""
    campaign_id, ids = await _sent_campaign(client, pool, count=1)
    key, _ = await campaign_keys(pool, campaign_id)
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique, created_at,"
        " data)"
        " SELECT m.tenant_id, m.id, m.campaign_id,"
        "        (ARRAY['email.delivered','email.opened','email.clicked'])[1 + g % 3], g % 7 = 0,"
        "        now() - make_interval(mins => g % 43200),"
        "        jsonb_build_object('device_type', (ARRAY['mobile','desktop'])[1 + g % 2],"
        "                           'country_code', (ARRAY['US','DE','FR'])[1 + g % 5 % 3])"
        " FROM messages m, generate_series(1, 200000) g WHERE m.id = $1",
        ids[0],
    )
    rows = await pool.fetchval("SELECT count(*) FROM campaign_stats WHERE campaign_id = $1", key)
    # Three types an hour for 30 days, and in the hour the campaign was made and queued:
    # campaign.created, campaign.sent and email.sent.
    assert rows <= 30 * 24 * 3 + 3 + 3
    # Other campaigns' rollups share the tables, as they would on a real account.
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, bucket, type, total)"
        " SELECT 1000000 + c, date_trunc('hour', now()) - make_interval(hours => h),"
        "        'email.delivered', 1"
        " FROM generate_series(1, 100) c, generate_series(0, 719) h"
    )
    await pool.execute(
        "INSERT INTO campaign_dimension_stats (campaign_id, bucket, type, dimension, value, total)"
        " SELECT 1000000 + c, date_trunc('hour', now()) - make_interval(hours => h),"
        "        'email.opened', 'device', 'mobile', 1"
        " FROM generate_series(1, 100) c, generate_series(0, 719) h"
    )
    await pool.execute("ANALYZE campaign_stats")
    await pool.execute("ANALYZE campaign_dimension_stats")
    # The statements the route runs, with the arguments it passes for the last 7 days and for
    # the whole lifetime: each must read its rollup's primary key.
    week = datetime.now(UTC) - timedelta(days=7)
    for since in (week, None):
        for name, args, index in (
            ("campaign_stats", (key, since, "day"), "campaign_stats_pkey"),
            ("campaign_dimensions", (key, since), "campaign_dimension_stats_pkey"),
        ):
            plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {SQL[name]}", *args)
            text = orjson.dumps(plan).decode() if not isinstance(plan, str) else plan
            assert index in text, text
            assert '"Relation Name": "events"' not in text, text
    data = (await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})).data
    engagement = data["engagement"]
    assert (
        data["overview"]["delivered"]
        + engagement["opened"]["total"]
        + engagement["clicked"]["total"]
        == 200_000
    )
    assert sum(d["opened"]["total"] for d in data["devices"]) == engagement["opened"]["total"]
    assert {c["country"] for c in data["countries"]} == {"US", "DE", "FR"}


async def test_a_bounce_after_delivery_counts_as_bounced_not_delivered(
    client: Client, pool: asyncpg.Pool
) -> None:
    campaign_id, ids = await _sent_campaign(client, pool, count=2)
    for m in ids:
        await _event(pool, m, "email.delivered")
    # What inbound records for a DSN about a message the receiver had accepted.
    await _event(pool, ids[0], "email.bounced", data={"after_delivery": True})

    overview = (await client.get(f"/analytics/campaigns/{campaign_id}")).data["overview"]

    assert (overview["sent"], overview["delivered"], overview["bounced"]) == (2, 1, 1)


async def test_analytics_by_tag(
    client: Client,
    pool: asyncpg.Pool,
    make_key: Callable[..., Awaitable[str]],
    api: Any,
    http: Any,
) -> None:
    """The messages carrying a tag, whatever their campaign, counted as a campaign is."""
    for i in range(3):
        body = {"to": f"t{i}@dest.test", "subject": "Hi", "content": "<p>Hi</p>"}
        reply = await client.post("/emails/send", json={**body, "tags": ["welcome"]})
        assert reply.status == 202, reply.body
    await client.post(
        "/emails/send",
        json={"to": "o@dest.test", "subject": "Hi", "content": "<p>Hi</p>", "tags": ["other"]},
    )
    tagged = [
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM messages WHERE tags @> ARRAY['welcome'] ORDER BY id"
        )
    ]
    for message in tagged[:2]:
        await _event(pool, message, "email.delivered")
    await _event(pool, tagged[0], "email.opened", unique=True)
    await _event(pool, tagged[0], "email.opened")

    data = (await client.get("/analytics/tags/welcome", params={"period": "24h"})).data
    assert data["tag"] == "welcome" and data["left_out"] == {}
    overview = data["overview"]
    assert (overview["recipients"], overview["sent"], overview["delivered"]) == (3, 3, 2)
    assert overview["opened"] == 1 and data["engagement"]["opened"]["total"] == 2
    assert data["rates"]["open_rate"] == 0.5

    # Another account's tag of the same name is another tag; a free plan gets the overview.
    free = Client(http, api.url + "/api/v1", await make_key("tiny", tier="free", test=True))
    theirs = (await free.get("/analytics/tags/welcome")).data
    assert theirs["overview"]["sent"] == 0 and theirs["engagement"] is None
    assert theirs["left_out"] == {"engagement": "starter"}


async def test_tag_analytics_reads_the_tag_index(pool: asyncpg.Pool) -> None:
    """20,000 messages of a tenant, four with the tag: found through the GIN index."""
    tenant = await pool.fetchval("INSERT INTO tenants (name) VALUES ('plan') RETURNING id")
    await pool.execute(
        "INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,"
        " status, tags)"
        " SELECT $1, g || '@plan.test', 'a@plan.test', 'r@dest.test', 'dest.test', 'sent',"
        "        CASE WHEN g % 5000 = 0 THEN ARRAY['rare'] ELSE ARRAY['common'] END"
        " FROM generate_series(1, 20000) g",
        tenant,
    )
    await pool.execute("ANALYZE messages")
    query = SQL["tag_stats"]
    plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {query}", tenant, "rare", None)
    text = orjson.dumps(plan).decode() if not isinstance(plan, str) else plan
    assert "messages_tags_idx" in text, text
