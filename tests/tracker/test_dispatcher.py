"""The outbox and the dispatcher, against a real receiver that fails in the ways real ones do."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from penguinmails.messages import ensure_tenant
from penguinmails.webhooks.endpoints import create_endpoint, rotate_secret
from tests.helpers import verify, wait_for
from tracker.dispatcher import RetryPolicy

FAST = RetryPolicy(first_delay=0.05, max_delay=0.2)


async def add_event(
    pool: asyncpg.Pool, tenant: int, message: int | None, kind: str, data: dict | None = None
) -> int:
    return await pool.fetchval(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, data)"
        " VALUES ($1, $2, 7, $3, $4) RETURNING id",
        tenant,
        message,
        kind,
        data or {},
    )


async def deliveries(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM webhook_deliveries ORDER BY id")


async def all_delivered(pool: asyncpg.Pool, count: int) -> bool:
    rows = await deliveries(pool)
    return len(rows) == count and all(r["status"] == "delivered" for r in rows)


async def test_every_event_fans_out_to_each_subscribed_active_endpoint(
    pool, settings, tenant, sent_messages
):
    other = await ensure_tenant(pool, "globex")
    (message,) = await sent_messages()
    url = "http://127.0.0.1:9/hook"
    everything, _ = await create_endpoint(pool, tenant, url, [], settings=settings)
    star, _ = await create_endpoint(pool, tenant, url, ["*"], settings=settings)
    opens, _ = await create_endpoint(pool, tenant, url, ["email.opened"], settings=settings)
    email, _ = await create_endpoint(pool, tenant, url, ["email.*"], settings=settings)
    inactive, _ = await create_endpoint(pool, tenant, url, [], settings=settings)
    await pool.execute("UPDATE webhooks SET active = false WHERE public_id = $1", inactive.id)
    await create_endpoint(pool, other, url, [], settings=settings)

    opened = await add_event(pool, tenant, message, "email.opened")
    completed = await add_event(pool, tenant, None, "campaign.completed")
    # A batch insert (as the MTA and the tracker write them) fans out in the same statement.
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, type)"
        " SELECT $1, $2, t FROM unnest($3::text[]) t",
        tenant,
        message,
        ["email.delivered", "email.bounced"],
    )

    got: dict[int, set[str]] = {}
    for row in await pool.fetch(
        "SELECT w.public_id AS webhook_id, d.event_id FROM webhook_deliveries d"
        " JOIN webhooks w ON w.id = d.webhook_id"
    ):
        got.setdefault(row["event_id"], set()).add(row["webhook_id"])
    assert got[opened] == {everything.id, star.id, opens.id, email.id}
    assert got[completed] == {everything.id, star.id}
    delivered, bounced = [
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM events WHERE type IN ('email.delivered', 'email.bounced') ORDER BY id"
        )
    ]
    assert got[delivered] == got[bounced] == {everything.id, star.id, email.id}


async def test_the_fan_out_rolls_back_with_its_event(pool, settings, tenant):
    await create_endpoint(pool, tenant, "http://127.0.0.1:9/", settings=settings)
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await add_event(conn, tenant, None, "campaign.completed")
                assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
                raise RuntimeError("abort")
    assert await deliveries(pool) == []


async def test_deliveries_are_signed_and_carry_the_event(
    pool, settings, tenant, sent_messages, start_tracker, receiver
):
    (message,) = await sent_messages()
    _endpoint, secret = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    _plain, plain_secret = await create_endpoint(
        pool,
        tenant,
        receiver.url("/hook/plain"),
        ["email.clicked"],
        "a-shared-secret-of-ours",
        settings=settings,
    )
    await start_tracker()
    clicked = await add_event(
        pool, tenant, message, "email.clicked", {"url": "https://acme.test/", "link_index": 0}
    )
    await wait_for(lambda: len(receiver.accepted()) == 2)

    by_path = {r.path: r for r in receiver.requests}
    payload = verify(secret, by_path["/hook"])
    assert verify(plain_secret, by_path["/hook/plain"]) == payload
    assert by_path["/hook"].headers["Content-Type"] == "application/json"
    event_id = await pool.fetchval("SELECT public_id FROM events WHERE id = $1", clicked)
    assert payload["id"] == event_id and event_id.startswith("evt_")
    assert payload["type"] == "email.clicked"
    assert payload["created"].endswith("Z")
    public_id, rfc_id, recipient = await pool.fetchrow(
        "SELECT public_id, message_id, recipient FROM messages WHERE id = $1", message
    )
    # A campaign id with no campaign row (this test's 7) shows as null, never as the integer.
    assert payload["data"] == {
        "email": {
            "id": public_id,
            "campaign_id": None,
            "to": recipient,
            "message_id": rfc_id,
            "clicked_at": payload["created"],
            "tags": [],
            "metadata": {},
        },
        "analytics": dict.fromkeys(
            ["open_count", "click_count", "device_type", "location", "country_code"]
        ),
        "url": "https://acme.test/",
        "link_index": 0,
    }
    await wait_for(lambda: all_delivered(pool, 2))
    row = (await deliveries(pool))[0]
    assert row["attempts"] == 1 and row["last_status_code"] == 200
    assert by_path["/hook"].webhook_id == row["public_id"]
    assert row["public_id"].startswith("whd_")


async def test_a_receiver_down_for_a_while_gets_every_event_once_per_delivery_id(
    pool, settings, tenant, sent_messages, start_tracker, receiver
):
    messages = await sent_messages(5)
    _endpoint, secret = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    await receiver.down()  # connection refused
    tracker = await start_tracker(dispatcher={"policy": FAST, "poll_interval": 0.05})
    for message in messages:
        await add_event(pool, tenant, message, "email.opened")
        await add_event(pool, tenant, message, "email.clicked", {"url": "https://a.test/"})

    await wait_for(lambda: _attempted(pool, at_least=2))
    await receiver.up()
    receiver.status = 503  # up, but failing
    await wait_for(lambda: len(receiver.requests) >= 10)
    receiver.status = 200  # recovered
    await wait_for(lambda: all_delivered(pool, 10), timeout=20)

    accepted = Counter(r.webhook_id for r in receiver.accepted())
    assert len(accepted) == 10 and set(accepted.values()) == {1}
    for request in receiver.requests:  # every attempt, failed or not, was properly signed
        verify(secret, request)
    ids = {r.webhook_id for r in receiver.requests}
    assert ids == {r["public_id"] for r in await deliveries(pool)}  # stable across retries
    rows = await deliveries(pool)
    assert all(r["attempts"] >= 2 for r in rows)
    assert await pool.fetchval("SELECT failing_since FROM webhooks") is None
    delivered = tracker.metrics.webhook_deliveries.labels("delivered")._value.get()
    assert delivered == 10
    assert tracker.metrics.webhook_deliveries.labels("retry")._value.get() >= 10


async def _attempted(pool: asyncpg.Pool, at_least: int) -> bool:
    return bool(
        await pool.fetchval("SELECT bool_and(attempts >= $1) FROM webhook_deliveries", at_least)
    )


async def test_redirects_are_failures_and_never_followed(
    pool, settings, tenant, start_tracker, receiver
):
    await create_endpoint(pool, tenant, receiver.url("/redirect"), settings=settings)
    await start_tracker(dispatcher={"policy": FAST, "poll_interval": 0.05})
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: _attempted(pool, at_least=2))
    assert {r.path for r in receiver.requests} == {"/redirect"}
    row = (await deliveries(pool))[0]
    assert row["status"] == "pending" and row["last_status_code"] == 302
    assert "redirects are not followed" in row["last_error"]


async def test_timeouts_are_retried(pool, settings, tenant, start_tracker, receiver):
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    receiver.delay = 1.0
    await start_tracker(
        dispatcher={
            "policy": FAST,
            "poll_interval": 0.05,
            "request_timeout": 0.2,
            "lease_seconds": 5.0,
        }
    )
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: _attempted(pool, at_least=1))
    row = (await deliveries(pool))[0]
    assert row["last_error"] == "timed out" and row["status"] in ("pending", "delivering")
    receiver.delay = 0
    await wait_for(lambda: all_delivered(pool, 1))


async def test_410_disables_the_endpoint_and_says_so(
    pool, settings, tenant, start_tracker, receiver
):
    gone, _ = await create_endpoint(pool, tenant, receiver.url("/hook/gone"), settings=settings)
    watcher, secret = await create_endpoint(
        pool, tenant, receiver.url("/hook/watch"), ["webhook.disabled"], settings=settings
    )
    await pool.execute("UPDATE webhooks SET active = false WHERE public_id = $1", watcher.id)
    await add_event(pool, tenant, None, "campaign.completed")
    await add_event(pool, tenant, None, "campaign.completed")
    await pool.execute("UPDATE webhooks SET active = true WHERE public_id = $1", watcher.id)
    receiver.status_for["/hook/gone"] = 410
    tracker = await start_tracker(
        dispatcher={"policy": FAST, "poll_interval": 0.05, "per_endpoint": 1}
    )
    await wait_for(lambda: _disabled(pool, gone.id))
    await wait_for(lambda: any(r.path == "/hook/watch" for r in receiver.accepted()))

    endpoint = await pool.fetchrow("SELECT * FROM webhooks WHERE public_id = $1", gone.id)
    assert endpoint["disabled_reason"] == "the endpoint answered 410 Gone"
    statuses = sorted(
        r["status"]
        for r in await pool.fetch(
            "SELECT d.status FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
            " WHERE w.public_id = $1",
            gone.id,
        )
    )
    assert statuses == ["cancelled", "failed"]  # one got its 410; the backlog is cancelled
    (notice,) = [r for r in receiver.requests if r.path == "/hook/watch"]
    payload = verify(secret, notice)
    assert payload["type"] == "webhook.disabled"
    public_id = await pool.fetchval("SELECT public_id FROM webhooks WHERE public_id = $1", gone.id)
    assert payload["data"] == {
        "webhook_id": public_id,
        "url": receiver.url("/hook/gone"),
        "reason": "the endpoint answered 410 Gone",
    }
    assert tracker.metrics.webhooks_disabled._value.get() == 1


async def _disabled(pool: asyncpg.Pool, webhook_id: str) -> bool:
    return not await pool.fetchval("SELECT active FROM webhooks WHERE public_id = $1", webhook_id)


async def test_an_endpoint_failing_for_days_is_disabled(
    pool, settings, tenant, start_tracker, receiver
):
    endpoint, _ = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    await pool.execute(
        "UPDATE webhooks SET failing_since = now() - interval '6 days' WHERE public_id = $1",
        endpoint.id,
    )
    receiver.status = 500
    await start_tracker(dispatcher={"policy": FAST, "poll_interval": 0.05})
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: _disabled(pool, endpoint.id))
    reason = await pool.fetchval("SELECT disabled_reason FROM webhooks")
    assert reason.startswith("every attempt failed for 6.0 days")
    kinds = [r["type"] for r in await pool.fetch("SELECT type FROM events ORDER BY id")]
    assert kinds == ["campaign.completed", "webhook.disabled"]


async def test_a_delivery_too_old_is_given_up(pool, settings, tenant, start_tracker, receiver):
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    receiver.status = 500
    await add_event(pool, tenant, None, "campaign.completed")
    await pool.execute("UPDATE webhook_deliveries SET created_at = now() - interval '4 days'")
    await start_tracker(dispatcher={"policy": FAST, "poll_interval": 0.05})
    await wait_for(lambda: _status(pool, "failed"))
    assert len(receiver.requests) == 1


async def _status(pool: asyncpg.Pool, status: str) -> bool:
    return await pool.fetchval("SELECT status FROM webhook_deliveries") == status


async def test_one_slow_endpoint_does_not_starve_the_others(
    pool, settings, tenant, start_tracker, receiver
):
    from tests.helpers import Receiver

    fast = await Receiver().start()
    try:
        await create_endpoint(pool, tenant, receiver.url(), settings=settings)
        receiver.delay = 0.5
        # A backlog of 40 for the slow endpoint, all older than anything for the fast one:
        # oldest-first alone would give the slow receiver every slot for 2.5 seconds.
        for _ in range(40):
            await add_event(pool, tenant, None, "campaign.completed")
        await create_endpoint(pool, tenant, fast.url(), settings=settings)
        for _ in range(10):
            await add_event(pool, tenant, None, "campaign.completed")
        await start_tracker(dispatcher={"per_endpoint": 3, "concurrency": 8, "poll_interval": 0.05})
        await wait_for(lambda: len(fast.accepted()) == 10, timeout=1.5)
        assert len(receiver.accepted()) < 20  # the slow one is still at it...
        assert receiver.max_concurrent == 3  # ...with no more than its share of slots
    finally:
        await fast.down()


async def test_private_targets_are_refused_at_delivery_time(
    pool, make_settings, settings, tenant, start_tracker, receiver
):
    # Registered while private targets were allowed, delivered by a strict dispatcher.
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    await create_endpoint(pool, tenant, f"http://localhost:{receiver.port}/hook", settings=settings)
    await create_endpoint(
        pool, tenant, f"http://2130706433:{receiver.port}/hook", settings=settings
    )
    strict = make_settings(tracker={"listen": "127.0.0.1:0"})
    await start_tracker(strict, dispatcher={"policy": FAST, "poll_interval": 0.05})
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: _attempted(pool, at_least=2))
    assert receiver.requests == []
    errors = [r["last_error"] for r in await deliveries(pool)]
    assert all(e.startswith("refused:") for e in errors), errors
    assert any("loopback" in e for e in errors)


async def test_rotated_secrets_sign_twice_during_the_overlap(
    pool, settings, tenant, start_tracker, receiver
):
    endpoint, old = await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    new = await rotate_secret(pool, tenant, endpoint.id, settings=settings)
    assert new is not None
    await start_tracker()
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: receiver.accepted())
    request = receiver.requests[0]
    from standardwebhooks.webhooks import Webhook

    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)
    verify(new, request)  # the seed's header follows the current secret


async def test_stopping_gives_unfinished_deliveries_back(
    pool, settings, tenant, start_tracker, receiver
):
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    receiver.delay = 5.0
    tracker = await start_tracker(dispatcher={"grace": 0.2, "poll_interval": 0.05})
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: receiver.concurrent == 1)
    await asyncio.wait_for(tracker.close(), 5)
    (row,) = await deliveries(pool)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)


async def test_expired_leases_of_a_dead_dispatcher_are_taken_over(
    pool, settings, tenant, start_tracker, receiver
):
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    await add_event(pool, tenant, None, "campaign.completed")
    await pool.execute(
        "UPDATE webhook_deliveries SET status = 'delivering', lease_owner = 'dead',"
        " lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 second'"
    )
    await start_tracker()
    await wait_for(lambda: all_delivered(pool, 1))
    assert len(receiver.accepted()) == 1


async def test_new_events_wake_an_idle_dispatcher_at_once(
    pool, settings, tenant, start_tracker, receiver
):
    await create_endpoint(pool, tenant, receiver.url(), settings=settings)
    await start_tracker(dispatcher={"poll_interval": 60.0})
    await asyncio.sleep(0.2)  # idle, waiting on LISTEN (or a minute of polling)
    await add_event(pool, tenant, None, "campaign.completed")
    await wait_for(lambda: receiver.accepted(), timeout=2)
