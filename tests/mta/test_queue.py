"""The queue's promises: leases, no double sends between live workers, nothing lost."""

from __future__ import annotations

import asyncio
from collections import Counter

from mta import queue
from mta.outcomes import Outcome, Reply
from tests.helpers import queue_messages, wait_for


async def _count(pool, status: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = $1", status)


async def test_two_workers_never_send_one_message_twice(
    pool, make_settings, smtp_peer, start_worker
):
    recipients = [f"u{i}@dest.test" for i in range(300)]
    await queue_messages(pool, recipients)
    settings = make_settings(mta={"routes": {"dest.test": smtp_peer.hop}, "batch_size": 20})
    first = await start_worker(settings, owner="worker-a")
    second = await start_worker(settings, owner="worker-b")

    await wait_for(lambda: _count_is(pool, "sent", 300), timeout=30)
    await first.stop()
    await second.stop()

    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert len(delivered) == 300
    assert max(delivered.values()) == 1


async def _count_is(pool, status: str, n: int) -> bool:
    return await _count(pool, status) == n


async def test_connections_to_one_domain_never_exceed_the_cap(
    pool, make_settings, smtp_peer, start_worker
):
    smtp_peer.fault("DATA", delay=0.02)  # keep sessions busy
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(120)])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "throttle": {"dest.test": {"max_connections": 3, "messages_per_connection": 10}},
        }
    )
    worker = await start_worker(settings)

    await wait_for(lambda: _count_is(pool, "sent", 120), timeout=30)
    await worker.stop()

    assert len(smtp_peer.received) == 120
    assert smtp_peer.state.max_open == 3  # measured at the peer, and the cap was reached
    # 120 messages at no more than 10 a connection needs at least 12 connections.
    assert smtp_peer.state.connections >= 12


async def test_two_workers_share_one_domain_connection_cap(
    pool, make_settings, smtp_peer, start_worker
):
    smtp_peer.fault("DATA", delay=0.02)  # keep sessions busy so both workers want more
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(150)])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "batch_size": 20,
            "throttle": {"dest.test": {"max_connections": 3, "messages_per_connection": 10}},
        }
    )
    first = await start_worker(settings, owner="worker-a")
    second = await start_worker(settings, owner="worker-b")

    await wait_for(lambda: _count_is(pool, "sent", 150), timeout=40)
    await first.stop()
    await second.stop()

    assert len(smtp_peer.received) == 150
    assert smtp_peer.state.max_open <= 3  # the cap holds across both processes' pools
    held = await pool.fetchval("SELECT count(*) FROM mta_connection_slots WHERE owner IS NOT NULL")
    assert held == 0  # stopped workers give their slots back


async def test_an_expired_lease_is_taken_again_and_marked_possible_duplicate(
    pool, make_settings, smtp_peer, start_worker
):
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    # A worker that claimed and then died: its lease runs out and nobody writes an outcome.
    [claimed] = await queue.claim(pool, 10, "dead-worker", 0.2)
    assert claimed["id"] == queue_id
    await asyncio.sleep(0.3)

    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))
    await wait_for(lambda: _count_is(pool, "sent", 1))
    await worker.stop()

    row = await pool.fetchrow("SELECT * FROM messages WHERE id = $1", queue_id)
    assert row["possible_duplicate"] is True
    assert len(smtp_peer.received) == 1
    event = await pool.fetchrow(
        "SELECT data FROM events WHERE message_id = $1 AND type = 'email.delivered'", queue_id
    )
    assert event["data"]["possible_duplicate"] is True


async def test_a_late_result_from_a_worker_that_lost_its_lease_changes_nothing(pool):
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    [slow] = await queue.claim(pool, 1, "slow-worker", 0.1)
    await asyncio.sleep(0.2)
    [fast] = await queue.claim(pool, 1, "fast-worker", 60)
    assert fast["id"] == slow["id"] == queue_id

    sent = Outcome("sent", "email.delivered", reply=Reply(250, "2.0.0 ok"), data={})
    bounced = Outcome("bounced", "email.bounced", reply=Reply(550, "5.1.1 unknown"), data={})
    assert await queue.record(pool, [queue.Result(queue_id, fast["lease_token"], sent)]) == {
        queue_id
    }
    assert await queue.record(pool, [queue.Result(queue_id, slow["lease_token"], bounced)]) == set()

    row = await pool.fetchrow("SELECT status, attempts FROM messages WHERE id = $1", queue_id)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    types = await pool.fetch("SELECT type FROM events WHERE message_id = $1 ORDER BY id", queue_id)
    assert [t["type"] for t in types] == ["email.sent", "email.delivered"]  # queued, 250
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_a_suppressed_address_is_never_sent_to(pool, make_settings, smtp_peer, start_worker):
    ids = await queue_messages(pool, ["Blocked@dest.test", "ok@dest.test"])
    tenant = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", ids[0])
    await pool.execute(
        "INSERT INTO suppressions (tenant_id, email, reason) VALUES ($1, 'blocked@dest.test', 'x')",
        tenant,
    )
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    await wait_for(lambda: _count_is(pool, "sent", 1))
    await wait_for(lambda: _count_is(pool, "suppressed", 1))
    await worker.stop()

    assert [r.rcpt_tos for r in smtp_peer.received] == [["ok@dest.test"]]
    row = await pool.fetchrow("SELECT attempts FROM messages WHERE id = $1", ids[0])
    assert row["attempts"] == 0


async def test_a_hard_bounce_suppresses_later_messages_to_that_address(
    pool, make_settings, smtp_peer, start_worker
):
    smtp_peer.fault("RCPT", 550, "5.1.1 no such user", match="gone@")
    await queue_messages(pool, ["gone@dest.test"])
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))
    await wait_for(lambda: _count_is(pool, "bounced", 1))

    [later] = await queue_messages(pool, ["gone@dest.test"])
    await wait_for(lambda: _count_is(pool, "suppressed", 1))
    await worker.stop()

    assert smtp_peer.received == []
    # Queued to an address already suppressed: never "sent", only suppressed.
    types = await pool.fetch("SELECT type FROM events WHERE message_id = $1 ORDER BY id", later)
    assert [t["type"] for t in types] == ["email.suppressed"]


async def test_an_unreadable_dkim_key_gives_the_message_back_untried(
    pool, make_settings, smtp_peer, start_worker
):
    from mta.domains import add_domain

    async with pool.acquire() as conn:
        await add_domain(conn, make_settings(), "acme.test", tenant="acme")
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    # This worker's server key cannot open the DKIM key sealed under the first one.
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}}, security={"secret_keys": ["other-key"]}
    )
    worker = await start_worker(settings)

    async def released():
        row = await pool.fetchrow("SELECT * FROM messages WHERE id = $1", queue_id)
        return row if row["status"] == "queued" and row["next_attempt_at"] else None

    await wait_for(lambda: _claimed_once(pool, queue_id))
    row = await wait_for(released)
    await worker.stop()

    assert smtp_peer.received == []  # never sent unsigned
    assert row["attempts"] == 0
    assert row["lease_token"] is None
    # Only the enqueue's event: no attempt was recorded.
    assert await pool.fetchval("SELECT array_agg(type) FROM events") == ["email.sent"]


async def _claimed_once(pool, queue_id: int) -> bool:
    row = await pool.fetchrow(
        "SELECT status, next_attempt_at > now() AS later FROM messages WHERE id = $1", queue_id
    )
    return row["status"] == "queued" and row["later"]


async def test_a_message_waiting_on_slots_held_elsewhere_goes_back_to_the_queue(
    pool, make_settings, smtp_peer, start_worker
):
    # Another MTA process holds both of the domain's connections (from the default source).
    await pool.execute(
        "INSERT INTO mta_connection_slots (domain, slot, owner, expires_at)"
        " SELECT 'default/domain:dest.test', g, 'other-process', now() + interval '1 hour'"
        " FROM generate_series(0, 1) g"
    )
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "throttle": {"dest.test": {"max_connections": 2}},
        }
    )
    worker = await start_worker(settings)

    async def given_back():
        row = await pool.fetchrow("SELECT * FROM messages WHERE id = $1", queue_id)
        return row if row["status"] == "queued" and row["next_attempt_at"] is not None else None

    await wait_for(lambda: _claimed_once(pool, queue_id), timeout=15)
    row = await wait_for(given_back)
    assert row["attempts"] == 0 and smtp_peer.received == []

    await pool.execute("UPDATE mta_connection_slots SET owner = NULL, expires_at = NULL")
    await wait_for(lambda: _count_is(pool, "sent", 1), timeout=15)
    await worker.stop()
    assert len(smtp_peer.received) == 1
