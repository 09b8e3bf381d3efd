"""analytics.updated: a campaign's numbers at most once a minute while they change, once
however many tracker processes run the loop, and never when nothing changed.

The minute is Postgres's clock: instead of waiting, a test moves the last announcement a
minute into the past, as the passing of time would.
"""

from __future__ import annotations

import asyncio

import asyncpg

from penguinmails.webhooks.endpoints import create_endpoint
from tests.helpers import verify, wait_for
from tracker.analytics import AnalyticsUpdates

ZERO = dict.fromkeys(
    [
        "sent",
        "delivered",
        "opened",
        "clicked",
        "bounced",
        "complained",
        "unsubscribed",
        "replied",
    ],
    0,
)


async def record(
    pool: asyncpg.Pool,
    tenant: int,
    campaign: int,
    message: int,
    kind: str,
    *,
    unique: bool = False,
    data: dict | None = None,
) -> None:
    """An event as its writer records it (the MTA, the tracker, inbound); the rollup follows."""
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique, data)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        tenant,
        message,
        campaign,
        kind,
        unique,
        data or {},
    )


async def announced(pool: asyncpg.Pool, campaign: int) -> list[dict]:
    rows = await pool.fetch(
        "SELECT data FROM events WHERE type = 'analytics.updated' AND campaign_id = $1 ORDER BY id",
        campaign,
    )
    return [r["data"]["analytics"] for r in rows]


async def a_minute_passes(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "UPDATE campaign_analytics_emitted"
        " SET last_emitted_at = last_emitted_at - interval '61 seconds'"
    )


async def test_the_numbers_count_each_kind_as_documented(
    pool, tenant, make_campaign, sent_messages
):
    campaign, _ = await make_campaign()
    m1, m2, m3 = await sent_messages(3, campaign_id=campaign)
    for message in (m1, m2, m3):
        await record(pool, tenant, campaign, message, "email.sent")
        await record(pool, tenant, campaign, message, "email.delivered")
    await record(pool, tenant, campaign, m1, "email.opened", unique=True)
    await record(pool, tenant, campaign, m1, "email.opened")  # a second open: one message
    await record(pool, tenant, campaign, m1, "email.clicked", unique=True)
    await record(pool, tenant, campaign, m1, "email.replied", unique=True)
    await record(pool, tenant, campaign, m2, "email.complained")
    await record(pool, tenant, campaign, m2, "email.unsubscribed", unique=True)
    # A DSN after the receiver had said 250: bounced, and no longer delivered.
    await record(pool, tenant, campaign, m3, "email.bounced", data={"after_delivery": True})

    assert await AnalyticsUpdates(pool).emit() == 1
    assert await announced(pool, campaign) == [
        {
            "sent": 3,
            "delivered": 2,
            "opened": 1,
            "clicked": 1,
            "bounced": 1,
            "complained": 1,
            "unsubscribed": 1,
            "replied": 1,
        }
    ]
    event = await pool.fetchrow("SELECT * FROM events WHERE type = 'analytics.updated'")
    assert event["tenant_id"] == tenant and event["message_id"] is None


async def test_at_most_once_a_minute_twice_across_two_minutes_never_without_change(
    pool, tenant, make_campaign, sent_messages
):
    campaign, _ = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    updates = AnalyticsUpdates(pool)
    await record(pool, tenant, campaign, message, "email.sent")
    assert await updates.emit() == 1

    # Within the minute: the numbers change, twice, but nothing is announced.
    await record(pool, tenant, campaign, message, "email.delivered")
    assert await updates.emit() == 0
    await record(pool, tenant, campaign, message, "email.opened", unique=True)
    assert await updates.emit() == 0
    assert len(await announced(pool, campaign)) == 1

    # A minute later: announced once, with the numbers as they are now.
    await a_minute_passes(pool)
    assert await updates.emit() == 1
    assert await updates.emit() == 0
    assert await announced(pool, campaign) == [
        {**ZERO, "sent": 1},
        {**ZERO, "sent": 1, "delivered": 1, "opened": 1},
    ]

    # Minutes pass with no change: nothing more, however often the loop runs.
    for _ in range(3):
        await a_minute_passes(pool)
        assert await updates.emit() == 0
    # An event that counts for nothing here (a deferral) is no change either.
    await record(pool, tenant, campaign, message, "email.deferred")
    await a_minute_passes(pool)
    assert await updates.emit() == 0
    assert len(await announced(pool, campaign)) == 2


async def test_each_campaign_has_its_own_minute(pool, tenant, make_campaign, sent_messages):
    first, _ = await make_campaign("First")
    second, _ = await make_campaign("Second")
    (m1,) = await sent_messages(campaign_id=first)
    (m2,) = await sent_messages(campaign_id=second)
    updates = AnalyticsUpdates(pool)
    await record(pool, tenant, first, m1, "email.sent")
    assert await updates.emit() == 1
    await record(pool, tenant, second, m2, "email.sent")  # the first's minute is no bar
    assert await updates.emit() == 1
    assert [len(await announced(pool, c)) for c in (first, second)] == [1, 1]


async def test_several_tracker_processes_announce_each_change_once(
    pool, database_url, tenant, make_campaign, sent_messages
):
    campaigns = [(await make_campaign(f"C{i}"))[0] for i in range(5)]
    for campaign in campaigns:
        (message,) = await sent_messages(campaign_id=campaign)
        await record(pool, tenant, campaign, message, "email.sent")
    # Four processes' loops, each on its own pool, racing for the same campaigns.
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in range(4)]
    try:
        for _ in range(3):
            counts = await asyncio.gather(*(AnalyticsUpdates(p).emit() for p in pools))
            assert sum(counts) == 5
            await a_minute_passes(pool)
            for campaign in campaigns:  # a change in every campaign, every round
                await record(pool, tenant, campaign, None, "email.sent")
    finally:
        for p in pools:
            await p.close()
    for campaign in campaigns:
        assert [a["sent"] for a in await announced(pool, campaign)] == [1, 2, 3]


async def test_campaigns_without_counted_numbers_or_a_campaign_row_are_skipped(
    pool, tenant, make_campaign, sent_messages
):
    campaign, _ = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    await record(pool, tenant, campaign, message, "email.deferred")  # counts for nothing here
    await record(pool, tenant, 999, None, "email.sent")  # a campaign id with no campaign
    assert await AnalyticsUpdates(pool).emit() == 0


async def test_the_dispatcher_runs_the_loop_and_delivers_the_event(
    pool, settings, tenant, make_campaign, sent_messages, start_tracker, receiver
):
    campaign, campaign_public = await make_campaign()
    (message,) = await sent_messages(campaign_id=campaign)
    _, secret = await create_endpoint(
        pool, tenant, receiver.url(), ["analytics.updated"], settings=settings
    )
    await record(pool, tenant, campaign, message, "email.sent")
    tracker = await start_tracker(dispatcher={"poll_interval": 0.05, "analytics_interval": 0.05})
    await wait_for(lambda: receiver.accepted())
    await asyncio.sleep(0.3)  # several more passes of the loop: nothing new to say
    (request,) = receiver.requests
    payload = verify(secret, request)
    assert payload["type"] == "analytics.updated"
    assert payload["id"].startswith("evt_")
    assert payload["data"] == {
        "campaign": {"id": campaign_public},
        "analytics": {**ZERO, "sent": 1},
    }

    # It stops with the dispatcher, within the shutdown bound.
    await asyncio.wait_for(tracker.close(), 5)
    assert tracker.dispatcher is not None
    assert tracker.dispatcher.analytics is not None


async def test_a_failing_loop_stops_the_dispatcher(pool, start_tracker):
    tracker = await start_tracker(dispatcher={"poll_interval": 0.05, "analytics_interval": 0.05})
    assert tracker.dispatcher is not None and tracker.dispatcher.analytics is not None

    async def broken() -> int:
        raise RuntimeError("a bug in the loop")

    tracker.dispatcher.analytics.emit = broken  # type: ignore[method-assign]
    stop = asyncio.Event()
    try:
        await asyncio.wait_for(tracker.run_until(stop), 5)
    except RuntimeError as exc:
        assert "a bug in the loop" in str(exc)
    else:
        raise AssertionError("run_until returned without the loop's error")
