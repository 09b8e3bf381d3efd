"""A worker paused past its lease while another takes the message over: the first one's late
result changes nothing, and the record shows one outcome."""

from __future__ import annotations

import asyncio
import signal

from tests.helpers import queue_messages, role_env, wait_for


async def test_sigstop_past_the_lease_then_a_late_result(
    pool, database_url, smtp_peer, tmp_path, spawn
):
    [queue_id] = await queue_messages(pool, ["slow@dest.test"])
    # The first DATA is slow: the first worker is frozen while the peer holds its message.
    smtp_peer.fault("DATA", delay=1.5, times=1)
    routes = f'{{"dest.test": "{smtp_peer.hop}"}}'
    first = await spawn(
        "mta",
        role_env(
            database_url,
            tmp_path,
            PENGUINMAILS_MTA__ROUTES=routes,
            PENGUINMAILS_MTA__LEASE_SECONDS="1",
        ),
    )
    await wait_for(lambda: smtp_peer.state.open_now > 0, timeout=20)
    await asyncio.sleep(0.3)  # inside the slow DATA now
    first.send_signal(signal.SIGSTOP)

    second = await spawn(
        "mta",
        role_env(
            database_url,
            tmp_path,
            PENGUINMAILS_MTA__ROUTES=routes,
            PENGUINMAILS_MTA__LEASE_SECONDS="30",
        ),
    )
    await wait_for(lambda: _status(pool, queue_id, "sent"), timeout=30)
    owner_after_takeover = await pool.fetchval(
        "SELECT data->>'attempt' FROM events WHERE message_id = $1 AND type = 'email.delivered'",
        queue_id,
    )

    first.send_signal(signal.SIGCONT)  # its 250 arrives; its lease is long gone
    await wait_for(lambda: len(smtp_peer.received) == 2, timeout=20)
    await asyncio.sleep(1.0)  # give the late writer every chance to (wrongly) write
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

    events = await pool.fetch(
        "SELECT type, data FROM events WHERE message_id = $1 ORDER BY id", queue_id
    )
    # Queued, then one outcome on record.
    assert [e["type"] for e in events] == ["email.sent", "email.delivered"]
    assert events[1]["data"]["attempt"] == int(owner_after_takeover)
    row = await pool.fetchrow(
        "SELECT status, possible_duplicate FROM messages WHERE id = $1", queue_id
    )
    assert row["status"] == "sent"
    assert row["possible_duplicate"] is True  # the takeover knew a copy might be out there
    ids = {r.message["Message-ID"] for r in smtp_peer.received}
    assert len(ids) == 1  # both copies carry the same Message-ID


async def _status(pool, queue_id: int, status: str) -> bool:
    return await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id) == status
