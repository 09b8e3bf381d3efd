"""The capture sink takes only what our MTA delivers to it: a signed VERP envelope sender
naming a sandbox message the MTA is delivering right now (under `penguinmails up`, any
message of ours), to that message's recipient. Everything else is refused with 550 5.7.1
before DATA; what is taken is filed under the queue message's tenant, whoever connects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from mta.sink import start_sink
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.verp import Verp
from tests.helpers import wait_for

MAIL = b"From: news@acme.test\r\nTo: ann@dest.test\r\nSubject: Hi\r\n\r\nHello Ann\r\n"


async def _message(
    pool: asyncpg.Pool,
    tenant: str = "acme",
    *,
    sandbox: bool = True,
    status: str = "sending",
    recipient: str = "ann@dest.test",
) -> int:
    """A queue message as the MTA holds it while delivering it (status 'sending')."""
    tenant_id = await ensure_tenant(pool, tenant)
    draft = Draft(
        from_email=f"news@{tenant}.test",
        subject="Hi",
        recipients=[recipient],
        text="Hello",
        sandbox=sandbox,
    )
    [queue_id] = await enqueue(pool, tenant_id, draft)
    await pool.execute("UPDATE messages SET status = $2 WHERE id = $1", queue_id, status)
    return queue_id


@pytest.fixture
async def start(pool: asyncpg.Pool) -> AsyncIterator[Callable[..., Any]]:
    """Start a sink for the given settings on a free port; returns the port."""
    servers: list[Any] = []

    async def run(settings: Settings) -> int:
        server = await start_sink(pool, settings, listen="127.0.0.1:0")
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield run
    for server in servers:
        server.close()
        await server.wait_closed()


async def _send(port: int, sender: str, recipients: list[str]) -> Any:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    async with client:
        return await client.sendmail(sender, recipients, MAIL)


async def _captures(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT tenant_id, message_id, mail_from, rcpt_tos FROM sandbox_messages ORDER BY id"
    )


@pytest.fixture
async def sink_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.mark.parametrize(
    "sender",
    ["stranger", "null", "forged_mac", "no_such_message", "live_message", "already_sent",
     "unsubscribe_address"],
)  # fmt: skip
async def test_mail_our_mta_is_not_delivering_is_refused_at_mail_from(
    sender: str, pool: asyncpg.Pool, sink_settings: Settings, start: Any
) -> None:
    port = await start(sink_settings)
    verp = Verp.from_settings(sink_settings)
    sandboxed = await _message(pool, "acme")
    good = verp.encode(sandboxed)
    local, _, domain = good.partition("@")
    address = {
        "stranger": "x@elsewhere.test",
        "null": "",
        "forged_mac": f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}",
        "no_such_message": verp.encode(sandboxed + 1000),
        "live_message": verp.encode(await _message(pool, "acme", sandbox=False)),
        "already_sent": verp.encode(await _message(pool, "acme", status="sent")),
        "unsubscribe_address": verp.unsubscribe_address(sandboxed),
    }[sender]

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(port, address, ["ann@dest.test"])

    assert refused.value.code == 550 and refused.value.message.startswith("5.7.1"), refused.value
    assert await _captures(pool) == []


async def test_a_capture_is_filed_under_its_message_s_tenant_and_only_for_its_recipient(
    pool: asyncpg.Pool, sink_settings: Settings, start: Any
) -> None:
    port = await start(sink_settings)
    verp = Verp.from_settings(sink_settings)
    theirs = await _message(pool, "acme")
    await _message(pool, "globex")  # the connecting client's own tenant, say

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await _send(port, verp.encode(theirs), ["victim@globex.test"])
    [error] = refused.value.recipients
    assert error.code == 550 and error.message.startswith("5.7.1")
    assert await _captures(pool) == []

    errors, reply = await _send(port, verp.encode(theirs), ["Ann@dest.test"])
    assert errors == {} and "captured" in reply

    owner = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", theirs)
    [capture] = await _captures(pool)
    assert (capture["tenant_id"], capture["message_id"]) == (owner, theirs)
    assert capture["rcpt_tos"] == ["Ann@dest.test"]

    # Once the MTA has recorded the delivery, the same envelope is a replay.
    await pool.execute("UPDATE messages SET status = 'sent' WHERE id = $1", theirs)
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await _send(port, verp.encode(theirs), ["ann@dest.test"])
    assert len(await _captures(pool)) == 1


async def test_under_up_every_message_of_ours_is_captured_and_nothing_else(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings], start: Any
) -> None:
    settings = make_settings(mta={"sandbox": True})
    port = await start(settings)
    verp = Verp.from_settings(settings)
    live = await _message(pool, "acme", sandbox=False)

    errors, _ = await _send(port, verp.encode(live), ["ann@dest.test"])
    assert errors == {}
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(port, "x@elsewhere.test", ["ann@dest.test"])
    assert refused.value.code == 550

    owner = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", live)
    [capture] = await _captures(pool)
    assert (capture["tenant_id"], capture["message_id"]) == (owner, live)


async def test_what_the_mta_delivers_in_test_mode_is_captured(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    sink_settings: Settings,
    start: Any,
    start_worker: Any,
) -> None:
    port = await start(sink_settings)
    queue_id = await _message(pool, "acme", status="queued")
    await start_worker(make_settings(mta={"sandbox_sink": f"127.0.0.1:{port}"}))

    await wait_for(
        lambda: pool.fetchval("SELECT status = 'sent' FROM messages WHERE id = $1", queue_id), 20
    )
    [capture] = await _captures(pool)
    assert capture["message_id"] == queue_id
    assert capture["mail_from"] == Verp.from_settings(sink_settings).encode(queue_id)
