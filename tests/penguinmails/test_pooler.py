"""The roles behind a real PgBouncer in transaction mode (`[database] pooler = "transaction"`).

In transaction mode a client's transactions land on whichever server session is free, so
nothing may lean on session state: the pool runs without a prepared statement cache, the MTA
and the webhook dispatcher poll instead of LISTENing (and say so), and migrations take
transaction-scoped advisory locks.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from api.keys import create_key
from mta.domains import add_domain
from penguinmails.config import Settings
from penguinmails.database import connect, create_pool
from penguinmails.migrations import available
from tests.helpers import PROCESS_KEY, free_port, role_env, run_cli, wait_for
from tests.pgbouncer import PgBouncer


@pytest.fixture
async def pgbouncer(pg_server) -> AsyncIterator[PgBouncer]:
    # Fewer server sessions than the roles' pools hold clients: transactions from one
    # client connection really do move between server sessions.
    bouncer = await PgBouncer(pg_server.socket_dir, pool_size=4).start()
    yield bouncer
    await bouncer.stop()


def _through(bouncer: PgBouncer, direct_url: str) -> str:
    return bouncer.url(urlsplit(direct_url).path.lstrip("/"))


async def _spawn(role: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "penguinmails.cli", role, env=env, stdout=out, stderr=out
        )


async def test_a_send_through_the_api_is_delivered_by_the_mta_behind_pgbouncer(
    database_url, pgbouncer, smtp_peer, tmp_path
):
    url = _through(pgbouncer, database_url)
    pooled = await create_pool(url, min_size=1, max_size=4, pooled=True)
    try:
        async with pooled.acquire() as conn:
            key = await create_key(conn, tenant="acme", test=False)
            settings = Settings.model_validate({"security": {"secret_keys": [PROCESS_KEY]}})
            await add_domain(conn, settings, "acme.test", tenant="acme")
        api_port = free_port()
        env = role_env(
            url,
            tmp_path / "var",
            PENGUINMAILS_DATABASE__POOLER="transaction",
            # More clients than PgBouncer has server sessions (4).
            PENGUINMAILS_DATABASE__POOL_MAX="8",
            PENGUINMAILS_MTA__ROUTES=f'{{"dest.test": "{smtp_peer.hop}"}}',
            # acme.test is a private test domain no public DNS publishes.
            PENGUINMAILS_MTA__REQUIRE_VERIFIED_DOMAINS="false",
            PENGUINMAILS_API__LISTEN=f"127.0.0.1:{api_port}",
            PENGUINMAILS_TRACKER__LISTEN=f"127.0.0.1:{free_port()}",
        )
        mta = await _spawn("mta", env, tmp_path / "mta.log")
        api = await _spawn("api", env, tmp_path / "api.log")
        tracker = await _spawn("tracker", env, tmp_path / "tracker.log")
        try:
            async with aiohttp.ClientSession() as http:
                statuses = []
                for i in range(20):
                    statuses.append(await _send(http, api_port, key, f"u{i}@dest.test"))
            assert statuses == [202] * 20
            await wait_for(lambda: len(smtp_peer.received) >= 20, timeout=30)
            await wait_for(lambda: _sent(pooled, 20), timeout=10)
        finally:
            for proc in (mta, api, tracker):
                proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 20) for p in (mta, api, tracker)]
        mta_log = (tmp_path / "mta.log").read_text()
        tracker_log = (tmp_path / "tracker.log").read_text()
        assert codes == [0, 0, 0], mta_log[-3000:] + tracker_log[-3000:]
    finally:
        await pooled.close()

    assert sorted(r.rcpt_tos[0] for r in smtp_peer.received) == sorted(
        f"u{i}@dest.test" for i in range(20)
    )
    # It said why mail waits up to a poll interval, and nothing went wrong on the way.
    assert "behind a transaction pooler" in mta_log
    assert "polling the queue" in mta_log
    assert "prepared statement" not in mta_log.replace("no prepared statement cache", "")
    assert "Traceback" not in mta_log
    # The tracker's webhook dispatcher polls too.
    assert "not listening for webhooks" in tracker_log
    assert "Traceback" not in tracker_log
    # The roles really went through PgBouncer.
    database = url.rsplit("/", 1)[1]
    assert f"db={database} user=postgres" in pgbouncer.log()


async def _send(http: aiohttp.ClientSession, port: int, key: str, to: str) -> int:
    body = {
        "from": {"email": "news@acme.test"},
        "to": to,
        "subject": "Through the pooler",
        "content": {"text": "hello"},
    }
    for _ in range(100):  # until the API listens
        try:
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/emails/send",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status != 422, await response.text()
                return response.status
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the API never answered")


async def _sent(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'") == n


async def test_concurrent_migrations_through_pgbouncer_apply_each_once(
    pg_server, pgbouncer, tmp_path
):
    admin = await asyncpg.connect(pg_server.url())
    await admin.execute("CREATE DATABASE pooled_fresh")
    try:
        url = pgbouncer.url("pooled_fresh")
        pooled_env = {"PENGUINMAILS_DATABASE__POOLER": "transaction"}
        runs = await asyncio.gather(
            *(run_cli(url, tmp_path / f"run{i}", "migrate", **pooled_env) for i in range(3))
        )
        assert [code for code, _, _ in runs] == [0, 0, 0], runs
        lines = [line for _, out, _ in runs for line in out.splitlines()]
        applied = [line for line in lines if line.startswith("applied")]
        assert sorted(applied) == sorted(f"applied {m.name}" for m in available())
        conn = await connect(pg_server.url("pooled_fresh"))
        try:
            versions = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            assert versions == len(available())
            # No session lock left behind on a pooled server session.
            held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert held == 0
        finally:
            await conn.close()
    finally:
        await admin.execute("DROP DATABASE pooled_fresh WITH (FORCE)")
        await admin.close()
