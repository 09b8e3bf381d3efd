"""Fixtures for real components: an embedded Postgres, SMTP peers, a DNS server, a webhook
receiver, an MTA worker, an HTTP client.

Postfix's smtpd is started once per session when a test asks for it (tests/postfix.py).

One Postgres server for the whole session; the schema is migrated once into a template
database, and every test gets its own copy (CREATE DATABASE ... TEMPLATE), so tests are
isolated without paying for migrations each time.

Under CI (CI=true) a skipped test fails the run unless ALLOWED_SKIPS names it: a missing
tool must be installed by .ci/run, not quietly leave its check out.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from penguinmails.config import Settings
from penguinmails.database import connect, create_pool
from penguinmails.migrations import migrate
from tests.dns_server import DNSServer
from tests.helpers import Receiver
from tests.postfix import Postfix
from tests.smtp_peer import SMTPPeer

TEMPLATE_DB = "pm_template"
_numbers = itertools.count()

# Tests that may skip under CI, by node id, each with why it cannot run there. None today:
# everything a check needs is installed by .ci/run.
ALLOWED_SKIPS: dict[str, str] = {}


# The deliverability fixtures (a published sending domain), for the checks' and the API's tests.
pytest_plugins = ["tests.deliverability"]


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _fail_unexpected_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (_under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if report.nodeid in ALLOWED_SKIPS:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, where every check must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    _fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    _fail_unexpected_skip(report)
    return report


class PgServer:
    def __init__(self, socket_dir: str) -> None:
        self.socket_dir = socket_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(self.socket_dir)}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # type: ignore[import-untyped]

    pgdata = tmp_path_factory.mktemp("pg") / "data"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield PgServer(str(pgdata))
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
async def template_database(pg_server: PgServer) -> str:
    admin = await asyncpg.connect(pg_server.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await connect(pg_server.url(TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@pytest.fixture
async def database_url(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    """A freshly migrated database of this test's own."""
    name = f"test_{next(_numbers)}"
    admin = await asyncpg.connect(pg_server.url())
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
        yield pg_server.url(name)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on this test's database with timeouts short enough for tests.

    Keyword arguments are sections: make_settings(mta={"routes": {...}}).
    """

    def build(**sections: dict[str, Any]) -> Settings:
        data: dict[str, Any] = {
            "database": {"url": database_url},
            "paths": {"data_dir": str(tmp_path / "var")},
            "security": {"secret_keys": ["test-key-one"]},
            "mta": {
                "hostname": "mta.test",
                "connect_timeout": 2.0,
                "command_timeout": 2.0,
                "data_timeout": 2.0,
                "poll_interval": 0.2,
                "shutdown_grace": 3.0,
                "retry_base_seconds": 60.0,
                # Tests route live mail to private peers ([mta.routes]) from domains no public
                # DNS knows; the deliverability tests turn the gate on.
                "require_verified_domains": False,
            },
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return Settings.model_validate(data)

    return build


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SMTPPeer]:
    peer = await SMTPPeer().start()
    yield peer
    await peer.stop()


@pytest.fixture(scope="session")
async def postfix() -> AsyncIterator[Postfix]:
    """Postfix's own smtpd, discarding what it accepts; one instance for the session."""
    server = await Postfix().start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def tls_peer_context() -> Any:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("peer.test", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
async def tls_smtp_peer(tls_peer_context: Any) -> AsyncIterator[SMTPPeer]:
    peer = await SMTPPeer(tls_context=tls_peer_context).start()
    yield peer
    await peer.stop()


class RunningWorker:
    """An MTA worker running in the test's loop; stop() drains it like SIGTERM would."""

    def __init__(self, worker: Any, task: Any) -> None:
        self.worker = worker
        self.task = task

    async def stop(self, timeout: float = 15.0) -> None:
        import asyncio

        self.worker.stop()
        await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def start_worker(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Callable[..., Any]]:
    import asyncio

    from mta.worker import Worker

    running: list[RunningWorker] = []

    async def start(settings: Settings, owner: str | None = None) -> RunningWorker:
        worker = Worker(pool, settings, database_url=database_url, owner=owner)
        task = asyncio.create_task(worker.run(), name=f"test-worker-{worker.owner}")
        handle = RunningWorker(worker, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    async with DNSServer() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback."""
    server = await Receiver().start()
    yield server
    await server.down()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
