"""A tiny real authoritative DNS server for tests, answering from a zone set per test.

It listens on 127.0.0.1 (UDP, and TCP on the same port so a resolver's fallback after a
truncated answer works), built with dnspython's message and rrset APIs, in the test's event
loop. The zone maps a name either to its records by type, or to a behaviour for every
query about it:

    server.load({
        "example.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."]},
        "mx1.example.test": {"A": (1, ["127.0.0.2"])},  # (TTL, records)
        "gone.test": NXDOMAIN,
        "broken.test": SERVFAIL,
        "slow.test": DROP,  # never answers: the resolver times out
        "half.test": {"A": ["127.0.0.3"], "AAAA": SERVFAIL},
    })

A name that owns records (or is an ancestor of one) answers NOERROR with no answer for the
types it lacks; any other name is NXDOMAIN. Every query is recorded, so a test can see
whether a resolver's cache kept it from asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeAlias, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

DEFAULT_TTL = 300


class Behaviour(enum.Enum):
    NXDOMAIN = "NXDOMAIN"
    SERVFAIL = "SERVFAIL"
    REFUSED = "REFUSED"
    NODATA = "NODATA"  # NOERROR with an empty answer section
    DROP = "DROP"  # no reply at all


NXDOMAIN = Behaviour.NXDOMAIN
SERVFAIL = Behaviour.SERVFAIL
REFUSED = Behaviour.REFUSED
NODATA = Behaviour.NODATA
DROP = Behaviour.DROP

Records: TypeAlias = Sequence[str] | tuple[int, Sequence[str]] | Behaviour
Zone: TypeAlias = Mapping[str, Mapping[str, Records] | Behaviour]


@dataclass(frozen=True)
class Query:
    name: str  # lower case, no final dot
    rdtype: str
    transport: str  # "udp" or "tcp"


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text.lower().rstrip(".") + ".")


class DNSServer:
    """Authoritative answers from `load`ed data; `queries` lists what was asked."""

    def __init__(self, *, ttl: int = DEFAULT_TTL, truncate_udp: bool = False) -> None:
        self.ttl = ttl
        self.truncate_udp = truncate_udp  # answer every UDP query with TC set: forces TCP
        self.queries: list[Query] = []
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._behaviours: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], Behaviour]
        self._behaviours = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- zone ----------------------------------------------------------------------------

    def load(self, zone: Zone) -> None:
        """Add (or replace) names; see the module docstring for the shape."""
        for owner, entry in zone.items():
            name = _name(owner)
            if isinstance(entry, Behaviour):
                self._behaviours[(name, None)] = entry
                continue
            for type_text, records in entry.items():
                rdtype = dns.rdatatype.from_text(type_text)
                if isinstance(records, Behaviour):
                    self._behaviours[(name, rdtype)] = records
                    continue
                if isinstance(records, tuple) and isinstance(records[0], int):
                    ttl, texts = records
                else:
                    ttl, texts = self.ttl, records
                self.set_records(owner, type_text, texts, ttl=ttl)

    def set_records(
        self, owner: str, rdtype: str, texts: Iterable[str], *, ttl: int | None = None
    ) -> None:
        name = _name(owner)
        rrset = dns.rrset.from_text_list(
            name, self.ttl if ttl is None else ttl, dns.rdataclass.IN, rdtype, list(texts)
        )
        self._rrsets[(name, rrset.rdtype)] = rrset

    def clear(self) -> None:
        self._rrsets.clear()
        self._behaviours.clear()
        self.queries.clear()

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """How many queries were received, optionally only for one name and/or type."""
        wanted = None if name is None else name.lower().rstrip(".")
        return sum(
            1
            for q in self.queries
            if (wanted is None or q.name == wanted) and (rdtype is None or q.rdtype == rdtype)
        )

    @property
    def address(self) -> str:
        """HOST:PORT, as `[mta] dns_servers` takes it."""
        return f"127.0.0.1:{self.port}"

    # -- answering -----------------------------------------------------------------------

    def _exists(self, name: dns.name.Name) -> bool:
        return any(owner.is_subdomain(name) for owner, _ in self._rrsets) or any(
            owner == name for owner, _ in self._behaviours
        )

    def _behaviour(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Behaviour | None:
        return self._behaviours.get((name, rdtype)) or self._behaviours.get((name, None))

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        self.queries.append(
            Query(
                question.name.to_text(omit_final_dot=True).lower(),
                dns.rdatatype.to_text(question.rdtype),
                transport,
            )
        )
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if transport == "udp" and self.truncate_udp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        name, rdtype = question.name, question.rdtype
        seen: set[dns.name.Name] = set()
        while True:  # follow CNAMEs inside the zone
            behaviour = self._behaviour(name, rdtype)
            if behaviour is Behaviour.DROP:
                return None
            if behaviour is Behaviour.NXDOMAIN:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif behaviour is Behaviour.SERVFAIL:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif behaviour is Behaviour.REFUSED:
                response.set_rcode(dns.rcode.REFUSED)
            elif behaviour is Behaviour.NODATA:
                pass
            elif (name, rdtype) in self._rrsets:
                response.answer.append(self._rrsets[(name, rdtype)])
            elif (name, dns.rdatatype.CNAME) in self._rrsets and name not in seen:
                seen.add(name)
                cname = self._rrsets[(name, dns.rdatatype.CNAME)]
                response.answer.append(cname)
                name = next(iter(cname)).target
                continue
            elif not self._exists(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            break
        try:
            return response.to_wire(max_size=65535 if transport == "tcp" else 512)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    # -- sockets -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # TCP must share the UDP port; retry if another socket has it
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp = transport
            self.port = port
            return
        raise OSError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            if self._tcp_tasks:
                await asyncio.wait(list(self._tcp_tasks))
            await self._tcp.wait_closed()
            self._tcp = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is None:
                    continue  # keep the connection silent; the client times out
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self._server.answer(data, "udp")
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)
