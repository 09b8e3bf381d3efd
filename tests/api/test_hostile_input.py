"""Hostile input at the API is refused with a clear error and no side effect."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import Iterator
from typing import Any

import dns.asyncresolver
import dns.nameserver
import dns.resolver
import pytest

from penguinmails.config import split_hostport
from tests.dns_server import DNSServer
from tests.helpers import Client

ZONE = ".hooks.test"
MIXED_NAME = "mixed" + ZONE


@pytest.fixture
async def test_dns(dns_server: DNSServer, monkeypatch: pytest.MonkeyPatch) -> DNSServer:
    """Names under ZONE are answered by the suite's DNS server, for every lookup in this
    process; any other name still goes to the machine's resolver.

    The address guard resolves through the event loop's getaddrinfo (the system resolver),
    which cannot be pointed at a server on another port: so the loop's getaddrinfo asks the
    test server for A and AAAA, over real DNS on loopback, and answers as getaddrinfo does.
    """
    loop = asyncio.get_running_loop()
    system = loop.getaddrinfo
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_hostport(dns_server.address))]
    resolver.lifetime = 5.0

    async def getaddrinfo(
        host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        if not (isinstance(host, str) and host.rstrip(".").endswith(ZONE)):
            return await system(host, port, family=family, type=type, proto=proto, flags=flags)
        found: list[Any] = []
        for rdtype, kind in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            if family not in (socket.AF_UNSPEC, kind):
                continue
            try:
                answer = await resolver.resolve(host, rdtype)
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.NXDOMAIN:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            for record in answer:
                address = (record.address, int(port or 0))
                sockaddr = address if kind == socket.AF_INET else (*address, 0, 0)
                found.append((kind, type or socket.SOCK_STREAM, proto, "", sockaddr))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "No address associated with hostname")
        return found

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return dns_server


REFUSED_TARGETS = [
    "http://127.0.0.1/hook",
    "http://10.1.2.3/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",
    "http://[2002:a00:1::]/hook",
    "http://224.0.0.1/hook",
    "http://2130706433/hook",
]


@pytest.fixture
async def strict_client(start_api, http, key, make_settings) -> Client:
    server = await start_api(make_settings(api={"listen": "127.0.0.1:0"}))
    return Client(http, server.url + "/api/v1", key)


@pytest.mark.parametrize("url", REFUSED_TARGETS)
async def test_webhook_targets_on_private_networks_are_refused(strict_client, pool, url):
    reply = await strict_client.post("/webhooks", json={"url": url})

    assert reply.status == 422, reply.body
    assert reply.body["error"]["details"][0]["field"] == "url"
    assert await pool.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_a_name_with_one_public_and_one_private_address_is_refused(
    strict_client, pool, test_dns
):
    test_dns.load({MIXED_NAME: {"A": ["93.184.216.34", "10.0.0.1"]}})

    reply = await strict_client.post("/webhooks", json={"url": f"http://{MIXED_NAME}/hook"})

    assert test_dns.count(MIXED_NAME, "A") >= 1  # the guard asked the test server
    assert reply.status == 422, reply.body
    assert "10.0.0.1" in reply.body["error"]["details"][0]["message"]
    assert await pool.fetchval("SELECT count(*) FROM webhooks") == 0


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("subject", {"subject": "Hi\r\nBcc: everyone@victim.test"}),
        ("subject", {"subject": "Hi\nX-Injected: 1"}),
        ("headers", {"headers": {"X-Campaign": "a\r\nBcc: x@victim.test"}}),
        ("from", {"from": {"email": "a@b.test\r\nRCPT TO:<x@victim.test>"}}),
        ("to", {"to": "victim@dest.test>\r\nRCPT TO:<other@victim.test"}),
    ],
)
async def test_header_and_envelope_injection_is_refused(client, pool, field, body):
    request = {"to": "ok@dest.test", "subject": "Hello", "content": {"text": "hi"}, **body}

    reply = await client.post("/emails/send", json=request)

    assert reply.status == 422, reply.body
    assert reply.body["error"]["code"] == "VALIDATION_ERROR"
    assert reply.body["error"]["details"][0]["field"].startswith(field)
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(
    "payload",
    [b'{"to": "ok@dest.test", "subject": ', b"\xff\xfe not json", b"[1, 2, 3]"],
)
async def test_malformed_json_is_refused_with_the_envelope(client, pool, payload):
    reply = await client.request(
        "POST", "/emails/send", data=payload, headers={"Content-Type": "application/json"}
    )

    assert reply.status in (400, 422)
    assert reply.body["success"] is False and reply.body["error"]["request_id"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_an_oversized_body_is_refused(client, pool):
    huge = (
        b'{"to": "ok@dest.test", "subject": "x", "content": {"text": "'
        + b"a" * (64 * 1024 * 1024)
        + b'"}}'
    )
    reply = await client.request(
        "POST", "/emails/send", data=io.BytesIO(huge), headers={"Content-Type": "application/json"}
    )

    assert reply.status == 413
    assert reply.body["error"]["code"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_the_database_refusing_writes_gets_503_never_202(client, pool, database_url):
    await pool.execute(
        f"ALTER DATABASE {_name(database_url)} SET default_transaction_read_only = on"
    )
    await pool.expire_connections()  # every connection from now on is read-only
    try:
        reply = await client.post(
            "/emails/send",
            json={"to": "ok@dest.test", "subject": "Hello", "content": {"text": "hi"}},
        )
    finally:
        async with pool.acquire() as conn:
            await conn.execute("SET default_transaction_read_only = off")
            await conn.execute(
                f"ALTER DATABASE {_name(database_url)} RESET default_transaction_read_only"
            )
        await pool.expire_connections()

    assert reply.status == 503, reply.body
    assert reply.body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert reply.headers["Retry-After"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


@pytest.fixture(autouse=True)
def _no_proxy_environment() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().endswith("_proxy")}
    yield
    os.environ.update(saved)


def _name(database_url: str) -> str:
    return database_url.split("@/", 1)[1].split("?", 1)[0]
