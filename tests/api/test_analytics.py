"""Campaign analytics from the rollup: counts, uniques, humans, rates, buckets, the plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from penguinmails.queries import load
from tests.helpers import Client, assert_error, create_campaign


async def _sent_campaign(
    client: Client, pool: asyncpg.Pool, count: int = 4
) -> tuple[int, list[int]]:
    made = await create_campaign(
        client,
        recipients=[
            {"email": f"r{i}@dest.test", "personalization": {"first_name": "R"}}
            for i in range(count)
        ],
    )
    await client.post(f"/campaigns/{made['id']}/send")
    ids = [
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM messages WHERE campaign_id = $1 ORDER BY id", made["id"]
        )
    ]
    return made["id"], ids


async def _event(
    pool: asyncpg.Pool,
    message_id: int,
    kind: str,
    *,
    unique: bool = False,
    machine: bool = False,
    hours_ago: float = 0,
) -> None:
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique, is_machine,"
        " created_at)"
        " SELECT tenant_id, id, campaign_id, $2, $3, $4, now() - make_interval(hours => $5)"
        " FROM messages WHERE id = $1",
        message_id,
        kind,
        unique,
        machine,
        hours_ago,
    )


async def test_overview_and_series(client: Client, pool: asyncpg.Pool) -> None:
    campaign_id, ids = await _sent_campaign(client, pool)
    for m in ids[:3]:
        await _event(pool, m, "email.delivered", hours_ago=3)
    await _event(pool, ids[3], "email.bounced", hours_ago=3)
    await _event(pool, ids[0], "email.opened", unique=True, machine=True, hours_ago=2)  # proxy
    await _event(pool, ids[0], "email.opened", hours_ago=1)  # the person, later
    await _event(pool, ids[1], "email.opened", unique=True, hours_ago=1)
    await _event(pool, ids[1], "email.clicked", unique=True, hours_ago=1)
    await _event(pool, ids[2], "email.unsubscribed", unique=True, hours_ago=1)
    await _event(pool, ids[2], "email.delivered", hours_ago=24 * 30)  # outside 7d

    reply = await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "7d"})
    data = reply.data
    o = data["overview"]
    assert (o["recipients"], o["sent"], o["delivered"], o["bounced"]) == (4, 4, 3, 1)
    assert o["opened"] == {"total": 3, "unique": 2, "human": 2, "unique_human": 1}
    assert o["clicked"] == {"total": 1, "unique": 1, "human": 1, "unique_human": 1}
    assert o["unsubscribed"] == 1 and o["complained"] == 0
    assert o["rates"]["delivery_rate"] == 0.75 and o["rates"]["open_rate"] == round(2 / 3, 4)
    assert o["rates"]["click_to_open_rate"] == 0.5
    assert data["interval"] == "day"

    hourly = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "24h"})
    ).data
    assert hourly["interval"] == "hour"
    assert sum(p["delivered"] for p in hourly["series"]) == 3
    assert [p["bucket"] for p in hourly["series"]] == sorted(p["bucket"] for p in hourly["series"])
    lifetime = (
        await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    ).data
    assert lifetime["overview"]["delivered"] == 4 and lifetime["since"] is None


async def test_analytics_errors(client: Client) -> None:
    assert_error(await client.get("/analytics/campaigns/4242"), 404, "NOT_FOUND")
    made = await create_campaign(client)
    for params in (
        {"period": "week"},
        {"period": "0d"},
        {"interval": "minute"},
        {"period": "9999d"},
    ):
        reply = await client.get(f"/analytics/campaigns/{made['id']}", params=params)
        assert_error(reply, 422, "VALIDATION_ERROR")


async def test_rollup_keeps_the_read_small(client: Client, pool: asyncpg.Pool) -> None:
    """200,000 events over 30 days: analytics reads the rollup's primary key, not events."""
    campaign_id, ids = await _sent_campaign(client, pool, count=1)
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique, created_at)"
        " SELECT m.tenant_id, m.id, m.campaign_id,"
        "        (ARRAY['email.delivered','email.opened','email.clicked'])[1 + g % 3], g % 7 = 0,"
        "        now() - make_interval(mins => g % 43200)"
        " FROM messages m, generate_series(1, 200000) g WHERE m.id = $1",
        ids[0],
    )
    rows = await pool.fetchval(
        "SELECT count(*) FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    assert rows <= 30 * 24 * 3 + 3 + 1  # and the hour the campaign was queued (email.sent)
    # Other campaigns' rollups share the table, as they would on a real account.
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, bucket, type, total)"
        " SELECT 1000000 + c, date_trunc('hour', now()) - make_interval(hours => h),"
        "        'email.delivered', 1"
        " FROM generate_series(1, 100) c, generate_series(0, 719) h"
    )
    await pool.execute("ANALYZE campaign_stats")
    # The statement the route runs, with the arguments it passes for the last 7 days and for
    # the whole lifetime: both must read the rollup's primary key.
    query = load("api")["campaign_stats"]
    week = datetime.now(UTC) - timedelta(days=7)
    for since in (week, None):
        plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {query}", campaign_id, since, "day")
        text = orjson.dumps(plan).decode() if not isinstance(plan, str) else plan
        assert "campaign_stats_pkey" in text, text
        assert '"Relation Name": "events"' not in text, text
    reply = await client.get(f"/analytics/campaigns/{campaign_id}", params={"period": "all"})
    total = reply.data["overview"]
    assert total["delivered"] + total["opened"]["total"] + total["clicked"]["total"] == 200_000


async def test_a_bounce_after_delivery_counts_as_bounced_not_delivered(
    client: Client, pool: asyncpg.Pool
) -> None:
    campaign_id, ids = await _sent_campaign(client, pool, count=2)
    for m in ids:
        await _event(pool, m, "email.delivered")
    # What inbound records for a DSN about a message the receiver had accepted.
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, data)"
        " SELECT tenant_id, id, campaign_id, 'email.bounced', '{\"after_delivery\": true}'"
        " FROM messages WHERE id = $1",
        ids[0],
    )

    overview = (await client.get(f"/analytics/campaigns/{campaign_id}")).data["overview"]

    assert (overview["sent"], overview["delivered"], overview["bounced"]) == (2, 1, 1)
