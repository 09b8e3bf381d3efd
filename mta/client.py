"""An SMTP client for the high-volume path to receivers' MX hosts: PIPELINING, CHUNKING, and a
data path with no per-message regular expression.

Round trips are what limit a connection over a real network, so a transaction is written in as
few groups as the server allows:
- CHUNKING (RFC 3030) with PIPELINING: `MAIL`, each `RCPT`, `BDAT <size> LAST` and the
  message in one write; one round trip a message. BDAT carries the bytes as they are, so
  there is no dot-stuffing at all.
- PIPELINING (RFC 2920): `MAIL`, each `RCPT` and `DATA` in one write, then the dot-stuffed
  message and its end of data once the 354 is in. RFC 2920 lets the message content lead the
  next group, so a transaction gives the connection back as soon as its end of data is
  written: the next transaction's `MAIL`/`RCPT`/`DATA` follows on the wire before the end of
  data's reply is back, and the replies are read in order. Two round trips become one. (The
  two are separate writes, back to back, not one: they travel in the same round trip, which
  is what counts, and no end of data waits for a next message that may not come.) This is
  safe by construction: the next message's content is only written after its 354, which the
  server sends after the previous end of data's reply, so a connection lost there loses no
  content of the next message (`NotSent`: it may be retried on a fresh connection at once).
  Under BDAT a transaction keeps the connection until its reply: the next message's content
  would otherwise be on the wire while the first reply is unknown.
- Neither: one command, one reply, as RFC 5321 has it (CHUNKING without PIPELINING, which
  no server we know of offers, is sent this way too, with DATA).

Replies are read by one reader per connection, in order, into the futures the writers
registered (a reply split across TCP segments or answering several pipelined commands is
read by the same loop). Parsing is strict: each line must end in CRLF (a bare LF is a
protocol error: the server's framing cannot be trusted, so the connection is dropped and the
message deferred), lines and replies are bounded, and every line of a multi-line reply carries
the same code.

The message comes from mta.compose, which writes CRLF only; a cheap count of CR, LF and CRLF
(C-speed scans, no per-line Python) checks it, and anything else is normalised to CRLF
with a logged warning, as aiosmtplib did for every message: a bare CR or LF must never reach
the wire (SMTP smuggling). Addresses and command arguments with control characters are
refused before anything is written.

Several recipients per transaction are supported (per-recipient results: a refused RCPT fails
only that recipient), for identical messages. The worker sends one recipient per transaction
because every message carries its own VERP return path.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mta.outcomes import Reply

log = logging.getLogger(__name__)

# RFC 5321 4.5.3.1.5 allows 512 octets for a reply line; be generous, but bounded.
MAX_LINE = 2048
MAX_REPLY = 16 * 1024  # all lines of one reply together

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_PATH_BREAKERS = re.compile(r"[ <>]")


class SMTPClientError(Exception):
    """The session cannot go on: the peer broke the protocol or the connection failed."""


class ProtocolError(SMTPClientError):
    """A reply we refuse to interpret (bare LF, over-long, malformed)."""


class ConnectionLost(SMTPClientError):
    """The connection closed or timed out."""


class TransactionFailed(SMTPClientError):
    """A transaction ended without a final reply. `content_sent` says whether any of the
    message may have reached the server: if so its fate is unknown (retry, at least once);
    if not, nothing was delivered and the message may go on another connection at once."""

    def __init__(self, cause: BaseException, content_sent: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.content_sent = content_sent


class NotSent(TransactionFailed):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause, content_sent=False)


@dataclass(frozen=True)
class Timeouts:
    connect: float  # TCP connect, and then again the greeting
    command: float  # each command's reply
    data: float  # writing the message and its final reply


@dataclass(frozen=True)
class Delivery:
    """The outcome of one transaction for each recipient: its RCPT refusal, else the MAIL
    refusal, else the reply to the message (end of data or BDAT)."""

    replies: dict[str, Reply]

    def __getitem__(self, recipient: str) -> Reply:
        return self.replies[recipient]


def check_argument(value: str) -> None:
    """Refuse control characters (CR, LF, NUL, ...) in anything put on a command line."""
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"control character U+{ord(bad.group()):04X} in {value!r}")


def crlf_only(data: bytes) -> bool:
    """No bare CR and no bare LF: three C-speed counts, no per-line Python."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


class WireMessage(bytes):
    """Message bytes that are CRLF-only and end in CRLF by construction: what the composer
    hands the client (mta.compose.render_signed). Its header values refuse CR and LF and it
    writes every body part with CRLF line ends, which tests/mta/test_compose.py holds it to
    with hostile input. The client sends these as they are; any other bytes are checked
    first, which at 100 KB is three passes over the message (a tenth of the MTA's CPU)."""

    __slots__ = ()


def wire_message(data: bytes) -> bytes:
    """The message as it goes on the wire: CRLF only, ending in CRLF."""
    if type(data) is not WireMessage and not crlf_only(data):
        # The composer never produces this; normalise rather than let a bare CR or LF reach
        # a server that might read it as a line end (smuggling).
        log.warning("message with bare CR or LF normalised", extra={"action": "smtp_data"})
        data = _NEWLINES.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


_LINE_DOT = re.compile(rb"\r\n\.")


def dot_stuff(data: bytes) -> bytes:
    """DATA content with its end of data, from CRLF-only bytes ending in CRLF (or empty)."""
    # Searched for first: a line that starts with a dot is rare, and sre finds one in about
    # two thirds of the time bytes.replace takes to find none.
    stuffed = data.replace(b"\r\n.", b"\r\n..") if _LINE_DOT.search(data) else data
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def _mailbox(address: str) -> bytes:
    """`<address>` for MAIL or RCPT. Besides control characters, no space, `<` or `>`: they
    would end the path early and let an address add parameters of its own to the command."""
    check_argument(address)
    if _PATH_BREAKERS.search(address):
        raise ValueError(f"space, < or > in address {address!r}")
    return f"<{address}>".encode()


@dataclass
class Submitted:
    """A transaction whose commands and content are written; `delivery()` awaits the rest."""

    _future: asyncio.Future[Delivery]

    @property
    def done(self) -> bool:
        return self._future.done()

    async def delivery(self) -> Delivery:
        return await self._future


class SMTPClient:
    """One SMTP session. `connect()` reads the greeting and says EHLO (HELO when refused);
    `starttls()`; `submit()`/`send()` transactions, reusable; `quit()`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        local_hostname: str,
        timeouts: Timeouts,
    ) -> None:
        self.host = host
        self.local_hostname = local_hostname
        self.timeouts = timeouts
        self.extensions: dict[str, str] = {}
        self.tls = False
        # What the session's TLS came to: version, cipher, and whether the certificate was
        # verified (recorded with each delivery over it).
        self.tls_info: dict[str, Any] | None = None
        self._reader = reader
        self._writer = writer
        self._pending: deque[asyncio.Future[Reply]] = deque()
        # One reader for the session's life: replies go to the waiting futures in order, and a
        # reply nobody waits for (a 421 on an idle connection, text injected after STARTTLS's
        # 220) ends the session instead of answering the next command.
        self._reading = asyncio.create_task(self._read_replies(), name="smtp-replies")
        self._failure: BaseException | None = None
        self._closing = False  # a 421 came, or QUIT went: no new transaction
        self._needs_reset = False  # the server may still hold a failed transaction's state
        self._turn = asyncio.Lock()  # whose commands go on the wire now
        self._tail: asyncio.Future[Delivery] | None = None  # the last transaction's result
        self._on_content: Callable[[], None] | None = None  # the transaction on the wire's

    # -- session ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        local_hostname: str,
        timeouts: Timeouts,
        local_address: str = "",
    ) -> SMTPClient:
        """Connect (from `local_address` when given: an egress source), read a 220 greeting
        and introduce ourselves. A refusing greeting or EHLO/HELO raises `RefusedError` with
        the reply; a failure, OSError or TimeoutError."""
        check_argument(local_hostname)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
        protocol = _QuickAck(reader, loop=loop)
        bind = (local_address, 0) if local_address else None
        async with asyncio.timeout(timeouts.connect):
            transport, _ = await loop.create_connection(
                lambda: protocol, host, port, local_addr=bind
            )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        client = cls(reader, writer, host, local_hostname, timeouts)
        try:
            greeting = await client._reply(timeouts.connect)
            if greeting.code != 220:
                raise RefusedError(greeting)
            await client.hello()
        except BaseException:
            client.close()
            raise
        return client

    async def hello(self) -> None:
        """EHLO, falling back to HELO where EHLO is not understood."""
        reply = await self.command(f"EHLO {self.local_hostname}")
        if reply.code == 250:
            self.extensions = _extensions(reply.message)
            return
        if not reply.permanent:  # 4xx: the server is there but will not talk now
            raise RefusedError(reply)
        reply = await self.command(f"HELO {self.local_hostname}")
        if reply.code != 250:
            raise RefusedError(reply)
        self.extensions = {}

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    async def starttls(self, context: ssl.SSLContext, server_hostname: str = "") -> None:
        """STARTTLS and EHLO again (RFC 3207: forget what was learnt in clear). A verifying
        `context` checks the certificate against `server_hostname` (the MX name)."""
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise RefusedError(reply)
        async with asyncio.timeout(self.timeouts.command):
            await self._writer.start_tls(context, server_hostname=server_hostname or self.host)
        self.tls = True
        tls = self._writer.get_extra_info("ssl_object")
        if tls is not None:
            cipher = tls.cipher()
            self.tls_info = {
                "version": tls.version(),
                "cipher": cipher[0] if cipher else None,
                "verified": context.verify_mode == ssl.CERT_REQUIRED,
            }
        self.extensions = {}
        await self.hello()

    async def command(self, line: str) -> Reply:
        """One command, one reply (setup commands; no transaction may be on the wire)."""
        check_argument(line)
        async with self._turn:
            await self._settle()
            expected = self._expect(1)
            await self._write(line.encode() + b"\r\n", self.timeouts.command)
            return await self._await(expected[0], self.timeouts.command)

    @property
    def usable(self) -> bool:
        """Whether a new transaction may start here."""
        return self._failure is None and not self._closing and not self._writer.is_closing()

    @property
    def pipelining(self) -> bool:
        return self.supports("pipelining")

    @property
    def chunking(self) -> bool:
        return self.supports("chunking") and self.pipelining

    async def quit(self) -> None:
        """QUIT and close; behind any transaction still awaiting its reply."""
        try:
            if self.usable:
                self._closing = True
                async with self._turn:
                    await self._settle()
                    expected = self._expect(1)
                    await self._write(b"QUIT\r\n", self.timeouts.command)
                    await self._await(expected[0], self.timeouts.command)
        except (SMTPClientError, OSError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection at once; whatever awaits a reply gets ConnectionLost."""
        self._fail(ConnectionLost("connection closed"))

    # -- transactions -------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        on_content: Callable[[], None] | None = None,
    ) -> Delivery:
        submitted = await self.submit(sender, recipients, data, on_content)
        return await submitted.delivery()

    async def submit(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        on_content: Callable[[], None] | None = None,
    ) -> Submitted:
        """Write one transaction. Returns once the connection may carry the next one: at
        once after the end of data under PIPELINING with DATA, after the final reply
        otherwise. `on_content` is called just before the first byte of the message is
        written, the point from which the server may hold it. Raises ValueError (an address
        we refuse to send), NotSent (the connection failed before any content was written)
        or TransactionFailed."""
        if not recipients:
            raise ValueError("no recipients")
        mail = b"MAIL FROM:" + _mailbox(sender)
        rcpts = [b"RCPT TO:" + _mailbox(r) for r in recipients]
        if not all(a.isascii() for a in (sender, *recipients)):
            if not self.supports("smtputf8"):
                raise NotAscii("non-ASCII address and the server does not offer SMTPUTF8")
            mail += b" SMTPUTF8"
        message = wire_message(data)
        if self.supports("size"):
            mail += b" SIZE=%d" % len(message)
        async with self._turn:
            if not self.usable:
                raise NotSent(self._failure or ConnectionLost("connection not usable"))
            try:
                await self._check_alive()
            except (SMTPClientError, OSError, TimeoutError) as exc:
                raise NotSent(exc) from exc
            self._on_content = on_content
            try:
                if self.chunking:
                    result = await self._chunked(mail, rcpts, recipients, message)
                elif self.pipelining:
                    result = await self._pipelined(mail, rcpts, recipients, message)
                else:
                    result = await self._stepwise(mail, rcpts, recipients, message)
            except asyncio.CancelledError:
                # Cut off mid-transaction: the server may be waiting for content that will
                # never come, so the session cannot carry another message.
                self._fail(ConnectionLost("transaction cancelled"))
                raise
            finally:
                self._on_content = None
            self._tail = result
        return Submitted(result)

    async def _chunked(
        self, mail: bytes, rcpts: list[bytes], recipients: Sequence[str], message: bytes
    ) -> asyncio.Future[Delivery]:
        reset = self._take_reset()
        head = reset + mail + b"\r\n" + b"".join(r + b"\r\n" for r in rcpts)
        head += b"BDAT %d LAST\r\n" % len(message)
        expected = self._expect((1 if reset else 0) + 1 + len(rcpts) + 1)
        try:
            self._content_going()
            await self._write(head + message, self.timeouts.data)
            replies = await self._replies(expected, self.timeouts.data)
        except (SMTPClientError, OSError, TimeoutError) as exc:
            self._fail(exc)
            raise TransactionFailed(exc, content_sent=True) from exc
        if reset and not replies.pop(0).accepted:
            # The server would not reset: its state is unknown, so no further transaction
            # here; this one's replies still say what became of its message.
            self._closing = True
        mail_reply, rcpt_replies, final = replies[0], replies[1:-1], replies[-1]
        if not final.accepted and mail_reply.accepted:
            # Refused BDAT: RFC 3030 has the server drop the transaction, but not every
            # server does; a RSET in the next group costs no round trip.
            self._needs_reset = True
        return _done(_delivery(recipients, mail_reply, rcpt_replies, final))

    async def _pipelined(
        self, mail: bytes, rcpts: list[bytes], recipients: Sequence[str], message: bytes
    ) -> asyncio.Future[Delivery]:
        reset = self._take_reset()
        group = reset + mail + b"\r\n" + b"".join(r + b"\r\n" for r in rcpts) + b"DATA\r\n"
        expected = self._expect((1 if reset else 0) + 1 + len(rcpts) + 1)
        try:
            await self._write(group, self.timeouts.command)
            replies = await self._replies(expected, self.timeouts.command)
        except (SMTPClientError, OSError, TimeoutError) as exc:
            self._fail(exc)
            raise NotSent(exc) from exc
        if reset:
            self._check_reset(replies.pop(0))
        mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        if data_reply.code != 354:
            if mail_reply.accepted:
                self._needs_reset = True
            return _done(_delivery(recipients, mail_reply, rcpt_replies, data_reply))
        if not any(r.accepted for r in rcpt_replies):
            # A server that says 354 with no recipient (RFC 2920 3.1): end the empty
            # message and start afresh; nothing can be delivered.
            message = b""
            self._needs_reset = True
        [final] = self._expect(1)
        try:
            self._content_going()
            await self._write(dot_stuff(message), self.timeouts.data)
        except (SMTPClientError, OSError, TimeoutError) as exc:
            self._fail(exc)
            raise TransactionFailed(exc, content_sent=True) from exc
        finishing = asyncio.ensure_future(self._finish(recipients, mail_reply, rcpt_replies, final))
        # Retrieved here too: a caller cancelled while waiting leaves nobody else to.
        finishing.add_done_callback(lambda f: f.cancelled() or f.exception())
        return finishing

    async def _finish(
        self,
        recipients: Sequence[str],
        mail_reply: Reply,
        rcpt_replies: list[Reply],
        final: asyncio.Future[Reply],
    ) -> Delivery:
        try:
            reply = await self._await(final, self.timeouts.data)
        except (SMTPClientError, OSError, TimeoutError) as exc:
            self._fail(exc)
            raise TransactionFailed(exc, content_sent=True) from exc
        return _delivery(recipients, mail_reply, rcpt_replies, reply)

    async def _stepwise(
        self, mail: bytes, rcpts: list[bytes], recipients: Sequence[str], message: bytes
    ) -> asyncio.Future[Delivery]:
        content_sent = False
        try:
            if self._take_reset():
                self._check_reset(await self._exchange(b"RSET\r\n", self.timeouts.command))
            mail_reply = await self._exchange(mail + b"\r\n", self.timeouts.command)
            if not mail_reply.accepted:
                return _done(_delivery(recipients, mail_reply, [], mail_reply))
            rcpt_replies = [await self._exchange(r + b"\r\n", self.timeouts.command) for r in rcpts]
            self._needs_reset = True  # until the transaction completes
            if not any(r.accepted for r in rcpt_replies):
                return _done(_delivery(recipients, mail_reply, rcpt_replies, rcpt_replies[-1]))
            data_reply = await self._exchange(b"DATA\r\n", self.timeouts.command)
            if data_reply.code != 354:
                return _done(_delivery(recipients, mail_reply, rcpt_replies, data_reply))
            content_sent = True
            self._content_going()
            final = await self._exchange(dot_stuff(message), self.timeouts.data)
            self._needs_reset = False
            return _done(_delivery(recipients, mail_reply, rcpt_replies, final))
        except (SMTPClientError, OSError, TimeoutError) as exc:
            self._fail(exc)
            if content_sent:
                raise TransactionFailed(exc, content_sent=True) from exc
            raise NotSent(exc) from exc

    async def _exchange(self, data: bytes, timeout: float) -> Reply:
        [expected] = self._expect(1)
        await self._write(data, timeout)
        return await self._await(expected, timeout)

    def _content_going(self) -> None:
        if self._on_content is not None:
            self._on_content()

    def _take_reset(self) -> bytes:
        if not self._needs_reset:
            return b""
        self._needs_reset = False
        return b"RSET\r\n"

    def _check_reset(self, reply: Reply) -> None:
        """Before any content: a refused RSET leaves the server's state unknown."""
        if not reply.accepted:
            refused = ProtocolError(f"RSET refused: {reply}")
            self._fail(refused)
            raise NotSent(refused)

    async def _settle(self) -> None:
        """Wait for the last transaction's reply (a setup command must not overlap it)."""
        tail, self._tail = self._tail, None
        if tail is not None and not tail.done():
            try:
                await asyncio.shield(tail)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and not tail.cancelled():
                    raise
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))

    async def _check_alive(self) -> None:
        """Before a transaction: the one before may still await its end of data's reply
        (PIPELINING with DATA), which the new one follows on the wire; otherwise it ended."""
        if self._tail is not None and self._tail.done():
            self._tail = None
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))

    # -- wire ---------------------------------------------------------------------------

    async def _write(self, data: bytes, timeout: float) -> None:
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() == 0:
            # All of it reached the kernel, so drain has nothing to wait for (a connection
            # lost meanwhile fails the replies awaited next).
            return
        async with asyncio.timeout(timeout):
            await self._writer.drain()

    def _expect(self, count: int) -> list[asyncio.Future[Reply]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self._pending.extend(futures)
        return futures

    async def _await(self, future: asyncio.Future[Reply], timeout: float) -> Reply:
        [reply] = await self._replies([future], timeout)
        return reply

    async def _replies(self, futures: list[asyncio.Future[Reply]], timeout: float) -> list[Reply]:
        """A pipelined group's replies, in order, each within `timeout` of the one before, as
        if its commands had gone one at a time; one timer for the group, and no wait at all
        for the replies that came in the same read as an earlier one."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout) as deadline:
                for index, future in enumerate(futures):
                    if not future.done():
                        if index:
                            deadline.reschedule(loop.time() + timeout)
                        await asyncio.shield(future)
        except TimeoutError:
            self._fail(ConnectionLost(f"no reply within {timeout:g}s"))
            raise ConnectionLost(f"no reply within {timeout:g}s") from None
        return [future.result() for future in futures]

    async def _reply(self, timeout: float) -> Reply:
        """A reply nobody asked for by command (the greeting)."""
        [expected] = self._expect(1)
        return await self._await(expected, timeout)

    async def _read_replies(self) -> None:
        """Read replies into the waiting futures, in order, until the session ends."""
        while True:
            try:
                reply = await self._read_reply()
            except (SMTPClientError, OSError, asyncio.IncompleteReadError) as exc:
                lost: BaseException = exc
                if isinstance(exc, asyncio.IncompleteReadError):
                    lost = ConnectionLost("connection closed by the server")
                self._fail(lost)
                return
            if reply.code == 421:
                # The server is closing the channel; what follows will not be answered.
                self._closing = True
            if not self._pending:
                if reply.code != 421:
                    self._fail(ProtocolError(f"reply nobody asked for: {reply}"))
                    return
                continue
            future = self._pending.popleft()
            if not future.done():
                future.set_result(reply)

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        code = b""
        total = 0
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                raise ProtocolError(f"reply line longer than {MAX_LINE} bytes") from exc
            except ValueError as exc:  # the limit, reached with the separator in the buffer
                raise ProtocolError(f"reply line longer than {MAX_LINE} bytes") from exc
            total += len(line)
            if total > MAX_REPLY:
                raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise ProtocolError("reply line not ended by CRLF (bare LF or CR)")
            if len(line) < 5 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r"):
                raise ProtocolError(f"malformed reply line {line[:40]!r}")
            if code and line[:3] != code:
                raise ProtocolError("reply lines with different codes")
            code = line[:3]
            if line[0:1] not in b"2345":
                raise ProtocolError(f"reply code {code.decode()} out of range")
            lines.append(line[4:-2].decode("utf-8", "replace").strip())
            if line[3:4] != b"-":
                return Reply(int(code), "\n".join(lines))

    def _fail(self, exc: BaseException) -> None:
        """The session is over: fail every waiting reply and drop the connection."""
        if self._failure is None:
            self._failure = exc
        kind = type(self._failure) if type(self._failure) is ProtocolError else ConnectionLost
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(kind(str(self._failure)))
                future.exception()  # retrieved here: nobody may be waiting any more
        if self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._writer.transport.abort()


class _QuickAck(asyncio.StreamReaderProtocol):
    """Acknowledge what we read at once. A server that answers a pipelined group in two
    writes (Postfix answers MAIL and RCPT, then reads the BDAT chunk, then answers it) has
    Nagle hold the second small write until our ACK of the first, and Linux delays that ACK
    by up to 40 ms when we have nothing to send: 40 ms a message, measured against Postfix
    over loopback (22 msg/s a connection instead of 450). TCP_QUICKACK is not sticky, so it
    is set again after each read: one setsockopt per read.

    The option is set through a socket object of our own on the transport's descriptor,
    detached (never closed) when the connection is lost: uvloop's transports hand out a
    stand-in that builds a socket object on every call, a third of this method's cost."""

    _socket: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is None or sock is None or sock.family == socket.AF_UNIX:
            return
        try:
            self._socket = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
        except OSError:
            self._socket = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._socket is not None:
            self._socket.detach()  # the transport owns the descriptor
            self._socket = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._socket is not None and _TCP_QUICKACK is not None:
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._socket.detach()
                self._socket = None


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class RefusedError(SMTPClientError):
    """The server refused the session (greeting, EHLO/HELO, STARTTLS); `reply` says how."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class NotAscii(ValueError):
    """A non-ASCII address for a server without SMTPUTF8 (RFC 6531: 5.6.7)."""


def _extensions(ehlo: str) -> dict[str, str]:
    """EHLO keywords (lower case) and their parameters; the first line is the greeting."""
    found: dict[str, str] = {}
    for line in ehlo.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.lower()] = params
    return found


def _done(delivery: Delivery) -> asyncio.Future[Delivery]:
    future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
    future.set_result(delivery)
    return future


def _delivery(recipients: Sequence[str], mail: Reply, rcpts: list[Reply], final: Reply) -> Delivery:
    replies: dict[str, Reply] = {}
    for index, recipient in enumerate(recipients):
        if not mail.accepted:
            replies[recipient] = mail
        elif index < len(rcpts) and not rcpts[index].accepted:
            replies[recipient] = rcpts[index]
        else:
            replies[recipient] = final
    return Delivery(replies)
