"""A crash between the peer's 250 and the commit: the resend carries the same Message-ID and
the attempt is marked as a possible duplicate."""

from __future__ import annotations

import asyncio
import signal

from tests.helpers import queue_messages, role_env, wait_for


async def test_kill_after_250_before_commit(pool, database_url, smtp_peer, tmp_path, spawn):
    [queue_id] = await queue_messages(pool, ["once@dest.test"])
    routes = f'{{"dest.test": "{smtp_peer.hop}"}}'
    # Outcomes wait 2 s to be batched: the kill lands after the 250, before the commit.
    env = role_env(
        database_url,
        tmp_path,
        PENGUINMAILS_MTA__ROUTES=routes,
        PENGUINMAILS_MTA__LEASE_SECONDS="1",
        PENGUINMAILS_MTA__OUTCOME_FLUSH_INTERVAL="2",
    )
    first = await spawn("mta", env)
    await wait_for(lambda: smtp_peer.received, timeout=20)
    await asyncio.sleep(0.1)
    first.kill()
    await first.wait()
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id) == "sending"

    second = await spawn("mta", env)
    await wait_for(lambda: len(smtp_peer.received) == 2, timeout=30)
    await wait_for(lambda: _sent(pool, queue_id), timeout=30)
    second.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.wait(), 30) == 0

    first_copy, resend = (r.message for r in smtp_peer.received)
    assert first_copy["Message-ID"] == resend["Message-ID"]
    row = await pool.fetchrow(
        "SELECT attempts, possible_duplicate FROM messages WHERE id = $1", queue_id
    )
    assert row["possible_duplicate"] is True
    event = await pool.fetchrow(
        "SELECT data FROM events WHERE message_id = $1 AND type = 'email.delivered'", queue_id
    )
    assert event["data"]["possible_duplicate"] is True


async def _sent(pool, queue_id: int) -> bool:
    return await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id) == "sent"
