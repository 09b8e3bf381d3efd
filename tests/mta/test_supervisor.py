"""`penguinmails mta --processes N`: a real supervisor over real workers, on the test database,
delivering to a local aiosmtpd peer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import Counter

import aiohttp
import orjson
import psutil
import pytest

from mta.supervisor import merge_metrics
from penguinmails.lifecycle import FORCE_EXIT_SECONDS
from tests.helpers import free_port, queue_messages, role_env, wait_for

CAP = 3  # the peer domain's connection cap, held across both workers


def _env(database_url: str, hop: str, tmp_path, **extra: str) -> dict[str, str]:
    settings = {
        "PENGUINMAILS_MTA__ROUTES": f'{{"dest.test": "{hop}"}}',
        "PENGUINMAILS_MTA__DEFAULT_THROTTLE__MAX_CONNECTIONS": str(CAP),
        "PENGUINMAILS_MTA__SHUTDOWN_GRACE": "3",
        # An idle connection keeps its slot of the cap until reaped: the first worker to
        # start can hold them all while the other's messages wait (DomainBusy).
        "PENGUINMAILS_MTA__IDLE_TIMEOUT": "0.5",
    }
    return role_env(database_url, tmp_path / "var", **{**settings, **extra})


async def _spawn(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        "mta",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def _workers(proc: asyncio.subprocess.Process) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(proc.pid).children() if c.is_running()]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _live_rows(pool) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM mta_processes WHERE seen_at > now() - interval '6 seconds'"
    )


async def _sent(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 20) -> tuple[int, str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), timeout)
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    return code, stderr


async def test_two_workers_share_the_cap_deliver_once_and_drain_together(
    pool, database_url, smtp_peer, tmp_path
):
    total = 150
    smtp_peer.fault("DATA", delay=0.01)
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(total)])
    port = free_port()
    env = _env(
        database_url,
        smtp_peer.hop,
        tmp_path,
        PENGUINMAILS_MTA__METRICS_LISTEN=f"127.0.0.1:{port}",
        # Small claims, so both workers take part rather than the first taking everything.
        PENGUINMAILS_MTA__BATCH_SIZE="10",
        PENGUINMAILS_MTA__MAX_IN_FLIGHT="20",
    )
    proc = await _spawn(env, "--processes", "2")
    try:
        await wait_for(lambda: len(_workers(proc)) == 2, timeout=20)
        await wait_for(lambda: _live_rows(pool), timeout=20)
        await wait_for(lambda: _sent_is(pool, total), timeout=60)
        assert await _live_rows(pool) == 2
        workers = _workers(proc)
        async with aiohttp.ClientSession() as http:
            health = await _get(http, f"http://127.0.0.1:{port}/healthz")
            metrics = await _get(http, f"http://127.0.0.1:{port}/metrics")
    finally:
        code, stderr = await _stop(proc)

    assert code == 0, stderr
    assert not [pid for pid in workers if _alive(pid)]
    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert len(delivered) == total and set(delivered.values()) == {1}
    assert smtp_peer.state.max_open <= CAP  # one cap, across both processes
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sending'") == 0
    assert await pool.fetchval("SELECT count(*) FROM mta_processes") == 0  # both forgot
    assert health[0] == 200, health
    assert orjson.loads(health[1]) == {"status": "ok", "workers": {"0": "ok", "1": "ok"}}
    sent = _samples(metrics[1], "penguinmails_mta_messages_total")
    assert set(sent) == {"0", "1"}  # both workers delivered, each its own series
    assert sum(sent.values()) == total
    assert "penguinmails_mta_workers 2.0" in metrics[1]


def _samples(text: str, name: str) -> dict[str, float]:
    """The value of `name` (status sent) per worker label, from an exposition text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and 'status="sent"' in line:
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            found[worker] = found.get(worker, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def _sent_is(pool, n: int) -> bool:
    return await _sent(pool) == n


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    for _ in range(100):  # the workers report their metrics address once they serve
        try:
            async with http.get(url) as response:
                body = await response.text()
                if response.status == 200:
                    return response.status, body
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_nothing_is_lost(
    pool, database_url, smtp_peer, tmp_path
):
    total = 300
    smtp_peer.fault("DATA", delay=0.01)
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(total)])
    env = _env(
        database_url,
        smtp_peer.hop,
        tmp_path,
        PENGUINMAILS_MTA__LEASE_SECONDS="1",
        PENGUINMAILS_MTA__BATCH_SIZE="10",
        PENGUINMAILS_MTA__MAX_IN_FLIGHT="20",
    )
    proc = await _spawn(env, "--processes", "2")
    try:
        await wait_for(lambda: len(_workers(proc)) == 2, timeout=20)
        await wait_for(lambda: len(smtp_peer.received) > 30, timeout=30)
        victim = _workers(proc)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(_workers(proc)) == 2 and victim not in _workers(proc), 20)
        await wait_for(lambda: _sent_is(pool, total), timeout=60)
    finally:
        code, stderr = await _stop(proc)

    assert code == 0, stderr
    assert '"action":"worker_exited"' in stderr.replace(" ", "")
    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert len(delivered) == total  # every message arrived at least once
    # Only what the killed worker had in flight can go twice; it is flagged.
    duplicates = sum(n - 1 for n in delivered.values())
    assert duplicates <= 20
    flagged = await pool.fetchval("SELECT count(*) FROM messages WHERE possible_duplicate")
    assert flagged >= duplicates


async def test_a_second_sigterm_stops_every_worker_at_once(pool, database_url, smtp_peer, tmp_path):
    gate = smtp_peer.hold("DATA")  # every transaction hangs: a drain would take the full grace
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(6)])
    env = _env(database_url, smtp_peer.hop, tmp_path, PENGUINMAILS_MTA__SHUTDOWN_GRACE="30")
    proc = await _spawn(env, "--processes", "2")
    try:
        await wait_for(lambda: len(gate.held) >= 2, timeout=30)
        workers = _workers(proc)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # draining, held up by the peer
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), FORCE_EXIT_SECONDS + 5)
    finally:
        gate.release(100)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 130
    assert not [pid for pid in workers if _alive(pid)]


async def test_sigkill_to_the_supervisor_leaves_no_worker(pool, database_url, smtp_peer, tmp_path):
    proc = await _spawn(_env(database_url, smtp_peer.hop, tmp_path), "--processes", "2")
    try:
        await wait_for(lambda: len(_workers(proc)) == 2, timeout=20)
        await wait_for(lambda: _live_rows(pool), timeout=20)
        workers = _workers(proc)
    finally:
        proc.kill()
        await proc.wait()
    # Each worker gets SIGTERM from the kernel when its parent dies, and drains (grace 3 s).
    await wait_for(lambda: not [pid for pid in workers if _alive(pid)], timeout=15)


@pytest.mark.slow
async def test_workers_that_keep_crashing_make_it_give_up(tmp_path):
    # No database answers here: each worker fails at once; the supervisor needs none.
    env = role_env(f"postgresql://nobody@127.0.0.1:{free_port()}/none", tmp_path / "var")
    proc = await _spawn(env, "--processes", "2")
    code, stderr = await _stop_when_done(proc)
    assert code == 1
    assert "giving up" in stderr
    started = [line["pid"] for line in _log_lines(stderr) if line.get("action") == "worker_start"]
    assert len(started) >= 5  # restarted, with back-off, before giving up
    assert not [pid for pid in started if _alive(pid)]


def _log_lines(stderr: str) -> list[dict]:
    lines = []
    for text in stderr.splitlines():
        try:
            lines.append(orjson.loads(text))
        except orjson.JSONDecodeError:
            continue  # a worker's traceback
    return lines


async def _stop_when_done(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    try:
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    return code, stderr


@pytest.mark.parametrize("value", ["0", "abc", "-2", "1.5"])
async def test_a_bad_process_count_is_refused(tmp_path, value):
    env = role_env("postgresql://unused@127.0.0.1:1/none", tmp_path / "var")
    proc = await _spawn(env, "--processes", value)
    code, stderr = await _stop_when_done(proc)
    assert code == 2
    assert 'argument --processes: expected a positive whole number or "auto"' in stderr


async def test_a_bad_process_count_in_the_config_is_refused(tmp_path):
    env = role_env("postgresql://unused@127.0.0.1:1/none", tmp_path / "var")
    proc = await _spawn({**env, "PENGUINMAILS_MTA__PROCESSES": "none"})
    code, stderr = await _stop_when_done(proc)
    assert code == 2
    assert "mta.processes" in stderr and "positive whole number" in stderr


def test_merged_metrics_label_each_worker():
    one = (
        "# HELP penguinmails_mta_messages_total Messages.\n"
        "# TYPE penguinmails_mta_messages_total counter\n"
        'penguinmails_mta_messages_total{domain="other",status="sent"} 2.0\n'
        "# HELP penguinmails_mta_smtp_seconds SMTP.\n"
        "# TYPE penguinmails_mta_smtp_seconds histogram\n"
        'penguinmails_mta_smtp_seconds_bucket{le="+Inf"} 2.0\n'
        "penguinmails_mta_smtp_seconds_count 2.0\n"
        "penguinmails_mta_smtp_seconds_sum 0.5\n"
    )
    text = merge_metrics({0: one, 1: one.replace("2.0", "3.0")}, workers=2, restarts=1).decode()
    assert 'penguinmails_mta_messages_total{domain="other",status="sent",worker="0"} 2.0' in text
    assert 'penguinmails_mta_messages_total{domain="other",status="sent",worker="1"} 3.0' in text
    assert 'penguinmails_mta_smtp_seconds_bucket{le="+Inf",worker="1"} 3.0' in text
    assert text.count("# TYPE penguinmails_mta_smtp_seconds histogram") == 1
    assert "penguinmails_mta_worker_restarts_total 1.0" in text


async def test_only_a_workers_own_notifications_count():
    from mta.supervisor import Supervisor
    from penguinmails.config import Settings

    script = (
        "import time\nfrom penguinmails.systemd import notify\nnotify('READY=1')\ntime.sleep(60)\n"
    )
    settings = Settings.model_validate({"mta": {"metrics_listen": ""}})
    supervisor = Supervisor(settings, 1, [sys.executable, "-c", script])
    worker = supervisor._workers[0]
    # Any local process can write to an abstract socket: a stranger claims to be the worker.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(
            b"READY=1\nPENGUINMAILS_METRICS=http://198.51.100.1", "\0" + worker.notify_name
        )
    running = asyncio.create_task(supervisor.run())
    try:
        await wait_for(lambda: worker.ready, timeout=20)
        assert worker.metrics_url is None  # the stranger's line was dropped, not just READY
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own handler: stop
        assert await asyncio.wait_for(running, 20) == 0
