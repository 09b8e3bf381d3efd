"""The real `penguinmails mta` process: SIGTERM drains, kill -9 loses nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter

import orjson
import pytest

from tests.helpers import free_port, queue_messages, role_env, wait_for


def _mta_env(database_url: str, hop: str, tmp_path, **extra: str) -> dict[str, str]:
    return role_env(
        database_url,
        tmp_path / "var",
        PENGUINMAILS_MTA__ROUTES=f'{{"dest.test": "{hop}"}}',
        **extra,
    )


async def _spawn(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        "mta",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _sent(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")


async def test_sigterm_drains_and_exits_zero(pool, database_url, smtp_peer, tmp_path):
    smtp_peer.fault("DATA", delay=0.3)
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(5)])
    proc = await _spawn(
        _mta_env(database_url, smtp_peer.hop, tmp_path, PENGUINMAILS_MTA__SHUTDOWN_GRACE="5")
    )
    await wait_for(lambda: smtp_peer.state.open_now > 0, timeout=20)

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 15)

    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert code == 0, stderr
    leased = await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sending'")
    assert leased == 0


@pytest.mark.slow
async def test_kill_9_during_a_run_loses_nothing(pool, database_url, smtp_peer, tmp_path):
    total = 400
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(total)])
    smtp_peer.fault("DATA", delay=0.005)
    env = _mta_env(
        database_url,
        smtp_peer.hop,
        tmp_path,
        PENGUINMAILS_MTA__LEASE_SECONDS="1",
        PENGUINMAILS_MTA__BATCH_SIZE="25",
        PENGUINMAILS_MTA__MAX_IN_FLIGHT="50",
    )
    kills = 0
    while kills < 4 and await _sent(pool) < total:
        proc = await _spawn(env)
        before = len(smtp_peer.received)
        try:
            await wait_for(lambda b=before: len(smtp_peer.received) > b + 20, timeout=30)
        finally:
            proc.kill()
            print((await proc.stderr.read()).decode()[-3000:])
        await proc.wait()
        kills += 1

    survivor = await _spawn(env)
    try:
        await wait_for(lambda: _all_final(pool, total), timeout=60)
    finally:
        survivor.send_signal(signal.SIGTERM)
        await asyncio.wait_for(survivor.wait(), 15)

    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert len(delivered) == total  # every message arrived at least once
    duplicates = sum(n - 1 for n in delivered.values())
    # Only what was in flight at a kill can be sent twice: at most max_in_flight per kill.
    assert duplicates <= kills * 50
    flagged = await pool.fetchval("SELECT count(*) FROM messages WHERE possible_duplicate")
    assert flagged >= duplicates


async def _all_final(pool, total: int) -> bool:
    return await _sent(pool) == total


async def test_metrics_and_health_report_real_values(pool, database_url, smtp_peer, tmp_path):
    import aiohttp

    port = free_port()
    smtp_peer.fault("RCPT", 550, "5.1.1 unknown", match="bad")
    await queue_messages(pool, ["ok1@dest.test", "ok2@dest.test", "bad@dest.test"])
    env = _mta_env(
        database_url, smtp_peer.hop, tmp_path, PENGUINMAILS_MTA__METRICS_LISTEN=f"127.0.0.1:{port}"
    )
    proc = await _spawn(env)
    try:
        await wait_for(lambda: _final_count_is(pool, 3), timeout=20)
        async with aiohttp.ClientSession() as http:
            health = await _get(http, f"http://127.0.0.1:{port}/healthz")
            metrics = await _get(http, f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)

    assert health[0] == 200
    assert orjson.loads(health[1]) == {"status": "ok"}
    text = metrics[1]
    assert 'penguinmails_mta_messages_total{domain="other",status="sent"} 2.0' in text
    assert 'penguinmails_mta_messages_total{domain="other",status="bounced"} 1.0' in text
    assert "penguinmails_mta_smtp_seconds_count 3.0" in text
    assert 'penguinmails_mta_queue_depth{status="queued"} 0.0' in text


async def _get(http, url: str) -> tuple[int, str]:
    for _ in range(50):  # the ops server starts just after the worker
        try:
            async with http.get(url) as response:
                return response.status, await response.text()
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def _final_count_is(pool, n: int) -> bool:
    final = await pool.fetchval("SELECT count(*) FROM messages WHERE status IN ('sent', 'bounced')")
    return final == n
