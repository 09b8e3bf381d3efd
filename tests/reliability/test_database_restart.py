"""The database restarts mid-run: the MTA, tracker and API reconnect and carry on, nothing lost."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import warnings

import aiohttp
import asyncpg
import pytest

from api.keys import create_key
from mta.domains import add_domain
from penguinmails.config import Settings
from penguinmails.database import connect, create_pool
from penguinmails.links import Links
from penguinmails.migrations import migrate
from penguinmails.tokens import LinkSigner
from tests.helpers import PROCESS_KEY, free_port, queue_messages, role_env, size, wait_for


@pytest.fixture
def own_postgres(tmp_path):
    """A Postgres of this test's own, since the test restarts it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    bindir = os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin")

    def restart() -> None:
        pg_ctl = os.path.join(bindir, "pg_ctl")
        as_owner = []
        if os.geteuid() == 0:  # pgserver runs the server as its own unprivileged user
            as_owner = [shutil.which("runuser") or "runuser", "-u", "pgserver", "--"]
        options = ["-o", f'-h "" -k {pgdata}', "-l", str(pgdata / "log")]
        # No pipes: the restarted server would inherit them and hold them open.
        for action in (["stop", "-m", "fast"], ["start", *options]):
            subprocess.run(
                [*as_owner, pg_ctl, "-D", str(pgdata), "-w", *action],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )

    yield f"postgresql://postgres@/postgres?host={pgdata}", restart
    server.cleanup()


async def test_every_role_carries_on_across_a_database_restart(
    own_postgres, tmp_path, spawn, smtp_peer
):
    url, restart = own_postgres
    conn = await connect(url)
    await migrate(conn)
    key = await create_key(conn, tenant="acme", test=False)
    settings = Settings.model_validate({"security": {"secret_keys": [PROCESS_KEY]}})
    await add_domain(conn, settings, "acme.test", tenant="acme")  # live keys send from it
    await conn.close()
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        total = size(600, 5_000)
        ids = await queue_messages(pool, [f"u{i}@dest.test" for i in range(total)])
        api_port, tracker_port = free_port(), free_port()
        env = role_env(
            url,
            tmp_path,
            PENGUINMAILS_MTA__ROUTES=f'{{"dest.test": "{smtp_peer.hop}"}}',
            PENGUINMAILS_API__LISTEN=f"127.0.0.1:{api_port}",
            PENGUINMAILS_TRACKER__LISTEN=f"127.0.0.1:{tracker_port}",
            PENGUINMAILS_TRACKER__BASE_URL=f"http://127.0.0.1:{tracker_port}",
        )
        smtp_peer.fault("DATA", delay=0.005)
        # The API and the tracker up before the MTA starts, so that all three are running
        # when the database restarts a quarter of the way through the queue: the MTA can get
        # that far before the others have opened their pools, and a role that cannot start
        # is systemd's to restart, not this test's subject.
        procs = [await spawn(role, env) for role in ("api", "tracker")]
        async with aiohttp.ClientSession() as http:
            for port in (api_port, tracker_port):
                await wait_for(lambda port=port: _answers(http, port), timeout=30)
        procs.append(await spawn("mta", env))

        await wait_for(lambda: len(smtp_peer.received) > total // 4, timeout=60)
        await asyncio.to_thread(restart)

        await wait_for(lambda: _count(pool, "sent", total), timeout=120)
        links = Links(LinkSigner([PROCESS_KEY.encode()]), f"http://127.0.0.1:{tracker_port}")
        async with aiohttp.ClientSession() as http:
            # The API answers again (503s while it reconnected are allowed, 500s are not).
            status = await _until_ok(
                http,
                "POST",
                f"http://127.0.0.1:{api_port}/api/v1/emails/send",
                key,
                {
                    "from": {"email": "news@acme.test"},
                    "to": "after@dest.test",
                    "subject": "After",
                    "content": {"text": "still here"},
                },
            )
            assert status == 202
            async with http.get(links.open_url(ids[0])) as response:
                assert response.status == 200
        await wait_for(lambda: _opened(pool, ids[0]), timeout=20)
        await wait_for(lambda: _count(pool, "sent", total + 1), timeout=60)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert len({r.rcpt_tos[0] for r in smtp_peer.received}) == total + 1
    finally:
        await pool.close()


async def _answers(http: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def _until_ok(http, method: str, url: str, key: str, body: dict) -> int:
    for _ in range(100):
        try:
            async with http.request(
                method, url, json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                assert response.status != 500, await response.text()
                if response.status != 503:
                    return response.status
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the API never recovered")


async def _count(pool, status: str, n: int) -> bool:
    try:
        return await pool.fetchval("SELECT count(*) FROM messages WHERE status = $1", status) == n
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False  # this test's own pool reconnects too


async def _opened(pool, queue_id: int) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM events WHERE message_id = $1 AND type = 'email.opened'", queue_id
        )
    )
