"""kill -9 the MTA again and again during a run: every message ends delivered at least once,
none lost, and duplicates stay within what was in flight at each kill."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest

from tests.helpers import queue_messages, role_env, size, wait_for

IN_FLIGHT = 100


async def _sent(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")


@pytest.mark.slow
async def test_repeated_kill_9_loses_nothing(pool, database_url, smtp_peer, tmp_path, spawn):
    total = size(2_000, 20_000)
    kills_wanted = size(4, 10)
    for start in range(0, total, 5_000):
        await queue_messages(
            pool, [f"u{i}@dest.test" for i in range(start, min(total, start + 5_000))]
        )
    env = role_env(
        database_url,
        tmp_path,
        PENGUINMAILS_MTA__ROUTES=f'{{"dest.test": "{smtp_peer.hop}"}}',
        PENGUINMAILS_MTA__LEASE_SECONDS="1",
        PENGUINMAILS_MTA__BATCH_SIZE="50",
        PENGUINMAILS_MTA__MAX_IN_FLIGHT=str(IN_FLIGHT),
    )
    step = total // (kills_wanted + 2)
    kills = 0
    while kills < kills_wanted and await _sent(pool) < total:
        proc = await spawn("mta", env)
        target = len(smtp_peer.received) + step
        await wait_for(lambda t=target: len(smtp_peer.received) >= t, timeout=60)
        proc.kill()
        await proc.wait()
        kills += 1

    survivor = await spawn("mta", env)
    await wait_for(lambda: _all_sent(pool, total), timeout=120)
    survivor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(survivor.wait(), 30) == 0

    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert len(delivered) == total  # every message arrived at least once
    duplicates = sum(n - 1 for n in delivered.values())
    assert duplicates <= kills * IN_FLIGHT  # only what was in flight at a kill
    flagged = await pool.fetchval("SELECT count(*) FROM messages WHERE possible_duplicate")
    assert flagged >= duplicates  # and every resend is marked as possibly one
    lost = await pool.fetchval("SELECT count(*) FROM messages WHERE status <> 'sent'")
    assert lost == 0


async def _all_sent(pool, total: int) -> bool:
    return await _sent(pool) == total
