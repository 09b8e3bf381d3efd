"""Hostile input is refused with a clear error and no side effect."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Client
from tests.conftest import wait_for
from tests.mta.test_delivery import queue_messages

MIXED_NAME = "mixed.pm-reliability.invalid"


@contextlib.contextmanager
def hosts_entries(lines: str) -> Iterator[None]:
    """A name with one public and one private address, through the real system resolver."""
    try:
        original = Path("/etc/hosts").read_text()
        with open("/etc/hosts", "a") as hosts:
            hosts.write(lines)
    except OSError:
        pytest.skip("/etc/hosts is not writable here; cannot give a name two addresses")
    try:
        yield
    finally:
        with open("/etc/hosts", "w") as hosts:
            hosts.write(original)


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


async def test_a_name_with_one_public_and_one_private_address_is_refused(strict_client, pool):
    with hosts_entries(f"93.184.216.34 {MIXED_NAME}\n10.0.0.1 {MIXED_NAME}\n"):
        reply = await strict_client.post("/webhooks", json={"url": f"http://{MIXED_NAME}/hook"})

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


async def test_smuggling_sequences_in_a_body_reach_the_peer_as_one_message(
    pool, make_settings, smtp_peer, start_worker
):
    evil = (
        "Hello\n.\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n"
        "DATA\r\nsmuggled\r\n.\r\nand\r.\rbare CR and \n.\r\n LF-dot mixes"
    )
    await queue_messages(pool, ["target@dest.test"], text=evil)
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    await wait_for(lambda: smtp_peer.received)
    await worker.stop()

    [received] = smtp_peer.received  # one transaction, one recipient: nothing smuggled
    assert received.rcpt_tos == ["target@dest.test"]
    assert b"\n" not in received.data.replace(b"\r\n", b"")  # no bare LF on the wire
    assert b"\r" not in received.data.replace(b"\r\n", b"")  # no bare CR either
    assert "MAIL FROM:<evil@attacker.test>" in received.message.get_content()


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
