"""What test modules import from each other lives here; fixtures live in the conftest files.

Waiting on real components, the environment of a real `penguinmails` process, messages in
the queue, HTTP to the API, a webhook receiver, a clock a test moves by hand, and dkimpy's
view of DNS.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from mta.throttle import Clock
from penguinmails.messages import Draft, enqueue, ensure_tenant

ROOT = Path(__file__).resolve().parent.parent  # the repository

# -- waiting ----------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll an (async or sync) predicate until it is truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# -- real processes ---------------------------------------------------------------------------

# `PENGUINMAILS_RELIABILITY=full` runs the reliability suite at its full sizes (20,000 messages
# through repeated kill -9, and so on); everywhere else, CI included, runs the bounded ones.
FULL = os.environ.get("PENGUINMAILS_RELIABILITY") == "full"


def size(bounded: int, full: int) -> int:
    return full if FULL else bounded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_listen() -> str:
    return f"127.0.0.1:{free_port()}"


PROCESS_KEY = "test-process-key"  # the server key of every process started with role_env


def role_env(database_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a `penguinmails` process on this test's database, with nothing of
    the developer's own PENGUINMAILS_* settings, no metrics listeners unless asked for, and no
    verified-domain gate."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_DATABASE__URL": database_url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(data_dir),
            "PENGUINMAILS_SECURITY__SECRET_KEYS": f'["{PROCESS_KEY}"]',
            "PENGUINMAILS_MTA__POLL_INTERVAL": "0.2",
            # Test domains publish no DNS: the verified-domain gate is for real deployments
            # (tests/api/test_domains.py turns it on where it is the subject).
            "PENGUINMAILS_MTA__REQUIRE_VERIFIED_DOMAINS": "false",
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
            "PENGUINMAILS_INBOUND__METRICS_LISTEN": "",
            **overrides,
        }
    )
    return env


async def run_cli(
    database_url: str, tmp_path: Path, *args: str, stdin: bytes | None = None, **overrides: str
) -> tuple[int | None, str, str]:
    """`penguinmails ARGS` as a process on this test's database: exit code, stdout, stderr."""
    env = role_env(database_url, tmp_path, **overrides)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out.decode(), err.decode()


# -- the queue --------------------------------------------------------------------------------


async def queue_messages(pool: asyncpg.Pool, recipients: list[str], **draft: Any) -> list[int]:
    """One message per recipient from tenant acme, as the API or `send` would queue them."""
    tenant = await ensure_tenant(pool, "acme")
    fields: dict[str, Any] = {
        "from_email": "news@acme.test",
        "subject": "Hello",
        "text": "Hi there",
    }
    fields.update(draft)
    return await enqueue(pool, tenant, Draft(recipients=recipients, **fields))


# -- the API ----------------------------------------------------------------------------------

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any

    @property
    def data(self) -> Any:
        assert self.body["success"] is True, self.body
        return self.body["data"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.body["success"] is False, self.body
        return self.body["error"]


class Client:
    """HTTP to one API server: every call returns (status, headers, parsed body)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session = session
        self.base = base
        self.key = key

    def with_key(self, key: str | None) -> Client:
        return Client(self.session, self.base, key)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        key: str | None = "default",
        params: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        token = self.key if key == "default" else key
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if json is not None:
            try:
                data = orjson.dumps(json)
            except TypeError:  # integers past 64 bits: the fuzz test sends them on purpose
                import json as stdlib_json

                data = stdlib_json.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, params=params
        ) as response:
            raw = await response.read()
            body = orjson.loads(raw) if raw else None
            return Reply(response.status, response.headers, body)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("PATCH", path, json, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


def assert_error(reply: Any, status: int, code: str) -> dict[str, Any]:
    """The error envelope, whole: the status, the code, a message, details, the request id."""
    assert reply.status == status, reply.body
    assert reply.body["success"] is False
    error = reply.body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    assert REQUEST_ID.match(error["request_id"])
    assert reply.headers["X-Request-Id"] == error["request_id"]
    assert "Traceback" not in str(reply.body)
    return dict(error)


def campaign_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Spring launch",
        "subject": 'Hi {{first_name | default: "there"}}',
        "content": {"html": "<p>Hello {{first_name}}</p>", "text": "Hello {{first_name}}"},
        "recipients": [
            {"email": "ann@dest.test", "personalization": {"first_name": "Ann"}},
            {"email": "bob@dest.test", "personalization": {"first_name": "Bob"}},
        ],
        "settings": {"track_opens": True, "track_clicks": False},
        "from": {"email": "news@acme.test", "name": "Acme"},
    }
    body.update(changes)
    return body


async def create_campaign(client: Client, **changes: Any) -> dict[str, Any]:
    reply = await client.post("/campaigns", json=campaign_body(**changes))
    assert reply.status == 201, reply.body
    return dict(reply.data)


async def row_pk(pool: asyncpg.Pool, table: str, public_id: str) -> int:
    """The integer key behind an id the API gave out, for tests that look at rows."""
    assert table in {"campaigns", "messages", "contacts", "webhooks", "api_keys", "users"}
    pk = await pool.fetchval(f"SELECT id FROM {table} WHERE public_id = $1", public_id)
    assert pk is not None, public_id
    return int(pk)


async def campaign_keys(pool: asyncpg.Pool, campaign_id: int | str) -> tuple[int, str]:
    """A campaign's integer key and its public id (`campaign_...`), given either: the routes
    that answer with an integer today will answer with the public id."""
    row = await pool.fetchrow(
        "SELECT id, public_id FROM campaigns WHERE id::text = $1 OR public_id = $1",
        str(campaign_id),
    )
    assert row is not None, campaign_id
    return row["id"], row["public_id"]


# -- webhooks ---------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """A webhook receiver on loopback. `status`, `delay` and `down()` inject failures."""

    status: int = 200
    delay: float = 0.0
    status_for: dict[str, int] = field(default_factory=dict)  # by path, overriding `status`
    requests: list[Request] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/hook/{name}", self._hook)
        app.router.add_post("/redirect", self._redirect)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def down(self) -> None:
        """Stop listening: connections are refused until up()."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def up(self) -> None:
        await self.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.answered < 300]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            status = self.status_for.get(request.path, self.status)
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.concurrent -= 1
        self.requests.append(Request(request.path, dict(request.headers), body, status))
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def _redirect(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(Request(request.path, dict(request.headers), b"", 302))
        raise web.HTTPFound(self.url("/hook"))


def verify(secret: str, request: Request) -> dict[str, Any]:
    """Check both signatures of a delivery; returns the payload.

    Standard Webhooks with the reference library (a whsec_ secret is passed as is; any other
    secret as its UTF-8 bytes, as the standard says), and the seed's plain HMAC header.
    """
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    payload: dict[str, Any] = Webhook(key).verify(request.body, request.headers)
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-PenguinMails-Signature"], f"sha256={expected}")
    return payload


# -- time -------------------------------------------------------------------------------------


class FakeClock(Clock):
    """A clock that moves only when a test advances it or when something sleeps on it.

    A sleep moves it by the time asked and then yields once, so a token bucket's waits cost no
    real time and add up to what the rate implies; `slept` lists them. Like a real clock it
    always moves forward a little, even for a wait shorter than a float can add (a bucket
    short of a whole token by a rounding error asks for one).
    """

    def __init__(self, start: float = 1_000.0, epoch: float = 1_800_000_000.0) -> None:
        self.now = start
        self.epoch = epoch  # what time() answers at monotonic() == 0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now = max(self.now + seconds, math.nextafter(self.now, math.inf))
        await asyncio.sleep(0)


# -- DKIM -------------------------------------------------------------------------------------


def dnsfunc_for(*records: str) -> Callable[..., bytes | None]:
    """What a resolver would return to dkimpy for the printed records (quoted strings joined)."""
    table = {}
    for record in records:
        name = record.split(" ", 1)[0]
        table[name.encode()] = "".join(re.findall(r'"([^"]*)"', record)).encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return table.get(name)

    return lookup


def debian_tool(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing and this
    runs as root (as CI and the README's fresh machine do): the suite brings what its checks
    need instead of assuming it. Skips only where it cannot install (and under CI a skip
    fails the run)."""
    import shutil
    import subprocess

    import pytest

    found = shutil.which(command)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = shutil.which(command)
    if found is None:
        pytest.skip(f"{command} is missing and Debian's {package} could not be installed")
    return found
