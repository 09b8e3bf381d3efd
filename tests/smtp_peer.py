"""A real SMTP server for tests (aiosmtpd, in the test's event loop) that records what it
receives and injects the faults a real receiver produces: 4xx/5xx at greeting, MAIL, RCPT
or DATA, a disconnect mid-DATA, a slow greeting, a transaction held at a stage until the test
lets it through, STARTTLS with a self-signed certificate. It advertises PIPELINING when asked
(`SMTPPeer(pipelining=True)`), so the delivery client's pipelined path meets the same faults.
It also measures how many connections were open at once, so throttles are checked at the
peer rather than trusted from the sender's own counters.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

STAGES = ("greeting", "MAIL", "RCPT", "DATA")


class Gate:
    """Holds transactions at a stage until the test lets them through, one per `release()`.

    `held` lists the recipients waiting at the gate right now, so a test knows a transaction
    is on the wire without guessing how long it takes to get there.
    """

    def __init__(self) -> None:
        self.held: list[str | None] = []
        self._passes = asyncio.Semaphore(0)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._passes.release()

    async def wait(self, recipient: str | None) -> None:
        self.held.append(recipient)
        try:
            await self._passes.acquire()
        finally:
            self.held.remove(recipient)


@dataclass
class Fault:
    stage: str
    code: int = 0
    message: str = ""
    match: str | None = None  # only when the envelope recipient contains this
    times: int | None = None  # only the first N times; None: always
    disconnect: bool = False  # drop the connection instead of answering
    delay: float = 0.0  # wait this long before answering (or before the greeting);
    # with no code, the answer after the wait is the normal one: a slow peer
    gate: Gate | None = None  # then wait at the gate until the test releases it

    def applies(self, recipient: str | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return self.match is None or (recipient is not None and self.match in recipient)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int
    tls: bool
    peer: str = ""  # the client's address, as this peer saw it
    helo: str = ""  # the name the client greeted with

    @property
    def message(self) -> EmailMessage:
        parsed: EmailMessage = message_from_bytes(self.data, policy=policy.default)  # type: ignore[assignment]
        return parsed


@dataclass
class PeerState:
    faults: list[Fault] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    mail_at: list[float] = field(default_factory=list)  # monotonic time of each MAIL FROM
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads pipelined commands anyway)

    def take(self, stage: str, recipient: str | None = None) -> Fault | None:
        for fault in self.faults:
            if fault.stage == stage and fault.applies(recipient):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None


class _PeerSMTP(SMTP):
    def __init__(self, state: PeerState, **kwargs: Any) -> None:
        super().__init__(_Handler(state), **kwargs)
        self._state = state
        state.connections += 1
        self.number = state.connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._state.open_now += 1
        self._state.max_open = max(self._state.max_open, self._state.open_now)
        self._state.transports.add(transport)
        self._transport_seen = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.open_now -= 1
        self._state.transports.discard(self._transport_seen)
        super().connection_lost(exc)

    async def _handle_client(self) -> None:
        fault = self._state.take("greeting")
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.gate is not None:
                await fault.gate.wait(None)
            if fault.code:
                await self.push(f"{fault.code} {fault.message}")
                assert self.transport is not None
                self.transport.close()
                return
        await super()._handle_client()


class _Handler:
    def __init__(self, state: PeerState) -> None:
        self._state = state

    async def _fault(self, server: SMTP, stage: str, recipient: str | None) -> str | None:
        fault = self._state.take(stage, recipient)
        if fault is None:
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.gate is not None:
            await fault.gate.wait(recipient)
        if fault.disconnect:
            assert server.transport is not None
            server.transport.abort()
            return "421 4.3.0 gone"  # never reaches the client
        if not fault.code:
            return None  # only slow: carry on as normal
        return f"{fault.code} {fault.message}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self._state.pipelining:
            responses.insert(-1, "250-PIPELINING")  # before the last line, "250 HELP"
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self._state.mail_at.append(time.monotonic())
        reply = await self._fault(server, "MAIL", None)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = await self._fault(server, "RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        reply = await self._fault(server, "DATA", recipient)
        if reply:
            return reply
        self._state.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                connection=server.number,  # type: ignore[attr-defined]
                tls=server._tls_protocol is not None,
                peer=str(session.peer[0]) if session.peer else "",
                helo=session.host_name or "",
            )
        )
        return "250 2.0.0 OK queued"


class SMTPPeer:
    """Start with `await peer.start()`; `peer.port` is the listening port on 127.0.0.1."""

    def __init__(
        self,
        tls_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        pipelining: bool = False,
    ) -> None:
        self.state = PeerState(pipelining=pipelining)
        self._tls = tls_context
        self._credentials = credentials
        self.logins: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def received(self) -> list[Received]:
        return self.state.received

    @property
    def hop(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fault(self, stage: str, code: int = 0, message: str = "", **kwargs: Any) -> Fault:
        assert stage in STAGES, stage
        fault = Fault(stage, code, message, **kwargs)
        self.state.faults.append(fault)
        return fault

    def hold(self, stage: str, **kwargs: Any) -> Gate:
        """Hold every transaction (or those matching `kwargs`) at `stage` until released."""
        gate = Gate()
        self.fault(stage, gate=gate, **kwargs)
        return gate

    async def start(self) -> SMTPPeer:
        loop = asyncio.get_running_loop()
        auth: dict[str, Any] = {}
        if self._credentials is not None:
            auth = {
                "authenticator": self._authenticate,
                "auth_require_tls": True,
                "auth_required": True,
            }
        self._server = await loop.create_server(
            lambda: _PeerSMTP(
                self.state,
                hostname="peer.test",
                tls_context=self._tls,
                require_starttls=False,
                data_size_limit=None,
                **auth,
            ),
            host="127.0.0.1",
            port=0,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        ok = (
            isinstance(auth_data, LoginPassword)
            and (login, auth_data.password.decode()) == self._credentials
        )
        if ok:
            self.logins.append(login)
        return AuthResult(success=ok)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.state.transports):
                transport.abort()  # type: ignore[attr-defined]
            await self._server.wait_closed()
