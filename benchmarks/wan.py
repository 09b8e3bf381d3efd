"""Delivery over a WAN-shaped link: messages per second per connection and with 5
connections, at a configurable round-trip time (default 50 ms), by how the client talks.

There is no kernel netem here, so a delaying TCP proxy in this process stands between the
client and the peer: each direction's bytes are forwarded RTT/2 after they arrive, in order.
Bandwidth is not limited; what is measured is round trips.

Clients, each on the same link and the same message:
- *chunking*: mta.smtp's DomainPool (the MTA's own path) with mta.client, peer offering
  CHUNKING: `MAIL`, `RCPT`, `BDAT n LAST` and the message in one write, one round trip.
- *pipelining*: the same pool, peer offering PIPELINING only: `MAIL`/`RCPT`/`DATA`, then
  the message; the end of data leads the next message's group, so about one round trip.
- *pipelining, one at a time*: mta.client's `send` in a loop on each connection, nothing
  overlapping: two round trips a message.
- *aiosmtplib*: `sendmail` in a loop on each connection, as the MTA sent before mta.client:
  four round trips (MAIL, RCPT, DATA, end of data).

The peer is Postfix's own smtpd (a throwaway instance discarding what it accepts, from
tests/postfix.py: one listener with CHUNKING, one without) when Postfix is installed (Postfix's
smtp-sink cannot offer CHUNKING); otherwise the project's sink (benchmarks/sink.py,
PIPELINING, no CHUNKING) and the chunking rows say n/a.

    python -m benchmarks wan [--quick] [--rtt-ms 50] [--messages N] [--size BYTES] [--peer sink]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from benchmarks.mta import ensure_postfix_tools, start_sink
from benchmarks.report import Table, machine, write_json
from mta.client import SMTPClient, Timeouts
from mta.routing import Route
from mta.smtp import DomainPool
from penguinmails.config import MtaSettings, ThrottleRule

CONNECTIONS = (1, 5)
SENDER = "bench@bench.test"
RECIPIENT = "rcpt@wan.test"
TIMEOUTS = Timeouts(connect=30, command=30, data=60)


class DelayProxy:
    """Forwards TCP to a target, each direction delayed by `rtt / 2`, order kept."""

    def __init__(self, target_port: int, rtt: float) -> None:
        self.target_port = target_port
        self.delay = rtt / 2
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(
                self._pump(reader, up_writer, writer),
                self._pump(up_reader, writer, up_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # stop(): this connection ends with the proxy; nobody awaits the handler
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reading: asyncio.StreamWriter,
    ) -> None:
        """From `reader` to `writer`, `self.delay` late; `reading` is `reader`'s socket."""
        loop = asyncio.get_running_loop()
        sock = reading.get_extra_info("socket")
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(1 << 16)
                # The proxy is the network, not a TCP endpoint with timers of its own: ACK at
                # once, as mta.client does on its socket (see _QuickAck there). A delayed ACK
                # here would hold a server's second small write for up to 40 ms (Nagle).
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await delivering


def message_of(size: int) -> bytes:
    """A CRLF message of about `size` bytes, some lines starting with a dot."""
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: wan bench\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = ".dotted line\r\n" + line * max((size - len(head)) // len(line), 1)
    return (head + body).encode()


@dataclass
class Peer:
    kind: str
    chunking_port: int | None  # offers PIPELINING and CHUNKING
    pipelining_port: int  # offers PIPELINING only
    stop: Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def peer(install: bool, kind: str) -> AsyncIterator[Peer]:
    if kind == "auto":
        ensure_postfix_tools(install)
    master = await asyncio.to_thread(os.path.exists, "/usr/lib/postfix/sbin/master")
    if kind == "auto" and master and os.geteuid() == 0:
        sys.path.insert(0, os.getcwd())  # tests/ from the repository checkout
        from tests.postfix import Postfix

        postfix = await Postfix().start()
        try:
            yield Peer(
                "postfix smtpd (discard)", postfix.port, postfix.pipelining_port, postfix.stop
            )
        finally:
            await postfix.stop()
        return
    sink = start_sink(postfix=False)

    async def stop() -> None:
        sink.stop()

    try:
        yield Peer(f"{sink.kind} (no Postfix: no CHUNKING peer)", None, sink.port, stop)
    finally:
        sink.stop()


async def pool_rate(port: int, connections: int, messages: int, data: bytes) -> float:
    """The MTA's own path: DomainPool and mta.client, `messages` sends in flight at once."""
    settings = MtaSettings(
        hostname="bench.test",
        connect_timeout=TIMEOUTS.connect,
        command_timeout=TIMEOUTS.command,
        data_timeout=TIMEOUTS.data,
        opportunistic_tls=False,
    )
    rule = ThrottleRule(max_connections=connections, messages_per_connection=1_000_000)
    pool = DomainPool("wan.test", rule, settings)
    route = Route(key="wan", hosts=(("127.0.0.1", port),))

    async def send() -> None:
        reply = await pool.send(route, SENDER, RECIPIENT, data)
        if not reply.accepted:
            raise RuntimeError(f"refused: {reply}")

    await asyncio.gather(*(send() for _ in range(connections)))  # open every connection
    assert pool.open_connections == connections, pool.open_connections
    start = time.perf_counter()
    await asyncio.gather(*(send() for _ in range(messages)))
    elapsed = time.perf_counter() - start
    await pool.close_idle()
    return messages / elapsed


async def sessions_rate(
    open_session: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
    close: Callable[[Any], Awaitable[None]],
    connections: int,
    messages: int,
) -> float:
    """One message after another on each of `connections` sessions."""
    sessions = await asyncio.gather(*(open_session() for _ in range(connections)))
    await asyncio.gather(*(send(s) for s in sessions))  # warm
    per = messages // connections

    async def run(session: Any) -> None:
        for _ in range(per):
            await send(session)

    start = time.perf_counter()
    await asyncio.gather(*(run(s) for s in sessions))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(close(s) for s in sessions))
    return per * connections / elapsed


async def client_rate(port: int, connections: int, messages: int, data: bytes) -> float:
    async def open_session() -> SMTPClient:
        return await SMTPClient.connect(
            "127.0.0.1", port, local_hostname="bench.test", timeouts=TIMEOUTS
        )

    async def send(client: SMTPClient) -> None:
        delivery = await client.send(SENDER, [RECIPIENT], data)
        if not delivery[RECIPIENT].accepted:
            raise RuntimeError(f"refused: {delivery}")

    async def close(client: SMTPClient) -> None:
        await client.quit()

    return await sessions_rate(open_session, send, close, connections, messages)


async def aiosmtplib_rate(port: int, connections: int, messages: int, data: bytes) -> float:
    async def open_session() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        return client

    async def send(client: aiosmtplib.SMTP) -> None:
        await client.sendmail(SENDER, [RECIPIENT], data)

    async def close(client: aiosmtplib.SMTP) -> None:
        await client.quit()

    return await sessions_rate(open_session, send, close, connections, messages)


async def cpu_per_message(port: int, messages: int, data: bytes) -> dict[str, float]:
    """Microseconds of this process's CPU per message, one connection straight to the peer
    (no proxy), one message after another: what each client costs, not what it waits."""
    costs: dict[str, float] = {}
    client = await SMTPClient.connect(
        "127.0.0.1", port, local_hostname="bench.test", timeouts=TIMEOUTS
    )
    await client.send(SENDER, [RECIPIENT], data)
    start = time.process_time()
    for _ in range(messages):
        delivery = await client.send(SENDER, [RECIPIENT], data)
        if not delivery[RECIPIENT].accepted:
            raise RuntimeError(f"refused: {delivery}")
    costs["mta.client"] = (time.process_time() - start) / messages * 1e6
    await client.quit()
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await smtp.connect()
    await smtp.sendmail(SENDER, [RECIPIENT], data)
    start = time.process_time()
    for _ in range(messages):
        await smtp.sendmail(SENDER, [RECIPIENT], data)
    costs["aiosmtplib"] = (time.process_time() - start) / messages * 1e6
    await smtp.quit()
    return costs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rtt = args.rtt_ms / 1000
    per_connection = args.messages or (20 if args.quick else 100)
    data = message_of(args.size)
    results: dict[str, Any] = {
        "benchmark": "wan",
        "quick": args.quick,
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "rtt_ms": args.rtt_ms,
        "message_bytes": len(data),
        "runs": [],
    }
    async with peer(install=not args.quick, kind=args.peer) as target:
        results["peer"] = target.kind
        modes: list[tuple[str, int | None, Callable[..., Awaitable[float]]]] = [
            ("chunking", target.chunking_port, pool_rate),
            ("pipelining", target.pipelining_port, pool_rate),
            ("pipelining, one at a time", target.pipelining_port, client_rate),
            ("aiosmtplib (before)", target.pipelining_port, aiosmtplib_rate),
        ]
        for name, port, measure in modes:
            for connections in CONNECTIONS:
                rate = None
                if port is not None:
                    proxy = await DelayProxy(port, rtt).start()
                    try:
                        rate = await asyncio.wait_for(
                            measure(proxy.port, connections, per_connection * connections, data),
                            timeout=120,
                        )
                    finally:
                        await proxy.stop()
                results["runs"].append(
                    {
                        "client": name,
                        "connections": connections,
                        "messages": per_connection * connections,
                        "messages_per_second": rate,
                        "round_trips_per_message": connections / (rate * rtt)
                        if rate and rtt
                        else None,
                    }
                )
        results["cpu_us_per_message"] = await cpu_per_message(
            target.pipelining_port, 300 if args.quick else 2000, data
        )
    results["load_average_after"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> None:
    before = {
        r["connections"]: r["messages_per_second"]
        for r in results["runs"]
        if r["client"].startswith("aiosmtplib")
    }
    table = Table(["client", "conns", "msgs", "msg/s", "RTTs/msg", "vs aiosmtplib"])
    for r in results["runs"]:
        rate = r["messages_per_second"]
        base = before.get(r["connections"])
        table.add(
            [
                r["client"],
                r["connections"],
                r["messages"],
                rate,
                r["round_trips_per_message"],
                rate / base if rate and base else None,
            ]
        )
    print(
        f"\n{results['message_bytes']:,} B messages through a {results['rtt_ms']:g} ms RTT "
        f"proxy to {results['peer']}"
    )
    print(table.render())
    cpu = results["cpu_us_per_message"]
    print(
        "\nCPU per message, one connection straight to the peer (PIPELINING, no CHUNKING): "
        f"mta.client {cpu['mta.client']:.0f} us, aiosmtplib {cpu['aiosmtplib']:.0f} us "
        f"({cpu['aiosmtplib'] / cpu['mta.client']:.1f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks wan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--messages", type=int, default=0, help="per connection")
    parser.add_argument("--size", type=int, default=5000, help="bytes on the wire")
    parser.add_argument(
        "--peer",
        choices=["auto", "sink"],
        default="auto",
        help="auto: Postfix's smtpd when installed (we must be root), else the project's sink",
    )
    args = parser.parse_args(argv)
    try:  # the loop the MTA runs on (penguinmails.cli)
        import uvloop

        results = uvloop.run(run(args))
    except ImportError:
        results = asyncio.run(run(args))
    report(results)
    write_json("wan", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
