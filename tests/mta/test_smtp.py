"""The delivery pool with mta.client: messages overlapping on one connection under
PIPELINING, a reused connection that fails before any content costing nothing, an unknown
outcome deferred (at least once), and the worker end to end through Postfix's smtpd."""

from __future__ import annotations

import asyncio
import re

from mta.routing import Route
from mta.smtp import DomainPool
from penguinmails.config import MtaSettings, ThrottleRule
from tests.helpers import queue_messages, wait_for

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n.dot\r\n"


def _pool(connections: int = 1) -> DomainPool:
    settings = MtaSettings(connect_timeout=5, command_timeout=5, data_timeout=5)
    rule = ThrottleRule(max_connections=connections, messages_per_connection=1000)
    return DomainPool("dest.test", rule, settings)


def _route(port: int) -> Route:
    return Route(key="dest.test", hosts=(("127.0.0.1", port),))


async def test_messages_share_one_connection_and_overlap_under_pipelining(postfix):
    pool = _pool(connections=1)
    route = _route(postfix.pipelining_port)
    replies = await asyncio.gather(
        *(pool.send(route, "a@sender.test", f"n{i}@dest.test", MESSAGE) for i in range(12))
    )
    assert pool.open_connections == 1
    await pool.close_idle()
    assert [r.code for r in replies] == [250] * 12
    assert "synchronization" not in postfix.log()  # Postfix accepted every group as pipelined


async def test_chunking_through_the_pool(postfix):
    pool = _pool(connections=2)
    route = _route(postfix.port)
    replies = await asyncio.gather(
        *(pool.send(route, "a@sender.test", f"c{i}@dest.test", MESSAGE) for i in range(6))
    )
    await pool.close_idle()
    assert [r.code for r in replies] == [250] * 6
    assert [r.message.split()[0] for r in replies] == ["2.0.0"] * 6


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    await reader.readuntil(b"\r\n")
    writer.write(b"250-scripted\r\n250 PIPELINING\r\n")


async def _transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"DATA\r\n")
    writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    await reader.readuntil(b"\r\n.\r\n")
    writer.write(b"250 2.0.0 queued\r\n")


async def test_a_reused_connection_lost_before_any_content_costs_a_fresh_connection(scripted):
    connections = []

    async def script(reader, writer):
        connections.append(writer)
        await _greet(reader, writer)
        await _transaction(reader, writer)
        if len(connections) == 1:
            await reader.readuntil(b"DATA\r\n")  # the second message's group: hang up
            return
        await _transaction(reader, writer)
        await reader.read()

    pool = _pool()
    route = _route(await scripted(script))
    first = await pool.send(route, "a@sender.test", "one@dest.test", MESSAGE)
    marked = []
    second = await pool.send(
        route, "a@sender.test", "two@dest.test", MESSAGE, on_wire=lambda: marked.append(1)
    )
    await pool.close_idle()
    assert (first.code, second.code) == (250, 250)
    assert len(connections) == 2
    assert marked == [1]  # the attempt that failed wrote no content: never offered


async def test_a_hang_up_after_end_of_data_is_unknown_and_deferred(scripted):
    connections = []

    async def script(reader, writer):
        connections.append(writer)
        await _greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")  # the whole message, then gone

    pool = _pool()
    reply = await pool.send(_route(await scripted(script)), "a@sender.test", "a@dest.test", MESSAGE)
    await pool.close_idle()
    # Maybe delivered, maybe not: deferred and sent again later (at least once), never bounced,
    # and not resent at once on another connection.
    assert reply.code is None and reply.message.startswith("4.4.2")
    assert len(connections) == 1
    assert pool.open_connections == 0


async def test_a_bare_lf_reply_defers(scripted):
    async def script(reader, writer):
        await _greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\n")
        await reader.read()

    pool = _pool()
    reply = await pool.send(_route(await scripted(script)), "a@sender.test", "a@dest.test", MESSAGE)
    await pool.close_idle()
    assert reply.code is None and "bare LF" in reply.message
    assert not reply.permanent


async def test_the_worker_delivers_through_postfix(pool, make_settings, postfix, start_worker):
    before = len(re.findall(r"\bnrcpt=1\b", postfix.log()))
    recipients = [f"user{i}@dest.test" for i in range(15)]
    await queue_messages(pool, recipients, text="line\n.\nlone dot above\n")
    settings = make_settings(mta={"routes": {"dest.test": postfix.hop}})
    worker = await start_worker(settings)

    async def sent() -> bool:
        count = await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")
        return bool(count == len(recipients))

    await wait_for(sent)
    await worker.stop()
    await wait_for(lambda: len(re.findall(r"\bnrcpt=1\b", postfix.log())) >= before + 15)
    assert "synchronization" not in postfix.log()
    assert "bare <LF>" not in postfix.log()


async def test_a_421_after_end_of_data_sends_the_message_behind_it_to_a_fresh_connection(
    scripted,
):
    connections = []
    overlapped = []

    async def script(reader, writer):
        connections.append(writer)
        await _greet(reader, writer)
        if len(connections) == 1:
            await reader.readuntil(b"DATA\r\n")
            writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
            await reader.readuntil(b"\r\n.\r\n")
            # The next message's group is already behind the end of data when we answer it.
            await asyncio.wait_for(reader.readuntil(b"DATA\r\n"), 5)
            overlapped.append(True)
            writer.write(b"421 4.3.2 shutting down\r\n")
            return
        await _transaction(reader, writer)
        await reader.read()

    pool = _pool(connections=1)
    route = _route(await scripted(script))
    first, second = await asyncio.gather(
        pool.send(route, "a@sender.test", "one@dest.test", MESSAGE),
        pool.send(route, "a@sender.test", "two@dest.test", MESSAGE),
    )
    await pool.close_idle()
    assert overlapped == [True]
    assert first.code == 421  # deferred by the worker, as any 421
    assert second.code == 250  # never offered on the first connection: sent on a fresh one
    assert len(connections) == 2


async def test_idle_connections_above_this_process_s_share_are_given_back_at_once(postfix):
    processes = 1
    settings = MtaSettings(connect_timeout=5, command_timeout=5, data_timeout=5)
    rule = ThrottleRule(max_connections=4, messages_per_connection=1000)
    pool = DomainPool("dest.test", rule, settings, processes=lambda: processes)
    route = _route(postfix.pipelining_port)
    # Alone, the process opens its whole cap.
    replies = await asyncio.gather(
        *(pool.send(route, "a@sender.test", f"n{i}@dest.test", MESSAGE) for i in range(40))
    )
    assert all(r.code == 250 for r in replies)
    assert pool.open_connections == 4
    # A second process appears: idle connections above the new share (2) close now, long
    # before idle_timeout; those within it stay for reuse.
    processes = 2
    await pool.close_idle(older_than=settings.idle_timeout)
    assert pool.open_connections == 2
    await pool.close_idle()
    assert pool.open_connections == 0
