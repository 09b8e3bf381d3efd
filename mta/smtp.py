"""SMTP delivery over pooled, reused connections, capped per destination domain.

One pool per destination domain holds at most `max_connections` connections (idle ones
included), each reused for up to `messages_per_connection` messages and closed after
`idle_timeout` without work. Every SMTP stage has a timeout. STARTTLS is used whenever
offered (opportunistic: certificates are not verified, RFC 7435); where a domain requires
TLS and the peer does not offer it, the message is deferred rather than sent in clear.

Receivers' MX hosts and routes are spoken to with mta.client (PIPELINING, CHUNKING, no
per-message regex). Under PIPELINING with DATA a connection goes back to the pool as soon
as a message's end of data is written, so the next message's MAIL/RCPT/DATA follows it on
the wire before its reply is in (mta.client explains why that is safe); a connection that
then fails before the next message's content was written (`NotSent`) costs that message
nothing: it is tried once more on a fresh connection. A route with credentials (a smarthost
or an identity's relay: submission with AUTH) still goes through aiosmtplib, which serves
that well at that volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from mta.client import (
    NotAscii,
    NotSent,
    RefusedError,
    SMTPClient,
    SMTPClientError,
    Timeouts,
    TransactionFailed,
)
from mta.mtasts import verifying_context
from mta.outcomes import Reply
from mta.routing import Route
from mta.slots import ConnectionSlots
from penguinmails.config import MtaSettings, ThrottleRule

log = logging.getLogger(__name__)


def _opportunistic_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# Submission with implicit TLS (RFC 8314): TLS from the first byte, no STARTTLS.
IMPLICIT_TLS_PORT = 465

# How long a message waits for another MTA process to free one of a domain's connections
# before it is given back to the queue (for whichever process holds the connections).
SLOT_WAIT = 2.0


class NotWanted(Exception):
    """The message was no longer to be sent once a connection was free for it."""


class DomainBusy(Exception):
    """Every connection the domain allows is open in other MTA processes."""


class _NoConnection(Exception):
    """Could not open a usable session; the reply says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _Unverified(_NoConnection):
    """An MX that cannot prove it is the one an enforced MTA-STS policy names."""


class _Retry(Exception):
    """A reused connection failed before any of the message was written: try a fresh one."""


@dataclass(frozen=True)
class Shape:
    """How one pool opens and counts its connections: the caps of every shaping level it is
    under (mta/shaping.py), where its connections leave from, and how they must be secured."""

    key: str
    max_connections: int  # the tightest of its levels'
    messages_per_connection: int
    # (shared slot key, cap) for each capped level: a connection holds one slot of each.
    slots: tuple[tuple[str, int], ...]
    source_address: str = ""  # the egress source's address; "" : the system's choice
    ehlo: str = ""  # the egress source's name; "" : [mta] hostname
    tls_required: bool = False
    # MTA-STS enforce: STARTTLS required and the certificate verified against the MX name.
    verify: bool = False

    @classmethod
    def of_rule(cls, key: str, rule: ThrottleRule) -> Shape:
        """A domain's own rule alone, as before sites and providers."""
        return cls(
            key,
            rule.max_connections,
            rule.messages_per_connection,
            ((key, rule.max_connections),),
            tls_required=rule.tls_required,
        )


@dataclass
class _Connection:
    host: str
    client: SMTPClient | None = None  # the delivery client, or
    submission: aiosmtplib.SMTP | None = None  # aiosmtplib, for a route with credentials
    # The shared connection slots this connection holds, (key, slot) per capped level.
    slots: list[tuple[str, int]] = field(default_factory=list)
    sent: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        if self.client is not None:
            return self.client.usable
        return self.submission is not None and self.submission.is_connected


class DomainPool:
    """Connections toward one destination (a domain, or a site from one egress source),
    never more than any of its levels allows."""

    def __init__(
        self,
        domain: str,
        rule: ThrottleRule,
        settings: MtaSettings,
        slots: ConnectionSlots | None = None,
        processes: Callable[[], int] = lambda: 1,
        shape: Shape | None = None,
    ) -> None:
        self.domain = domain
        self.rule = rule
        self.shape = shape or Shape.of_rule(domain, rule)
        self._settings = settings
        self._slots = slots
        self._processes = processes
        self._idle: list[_Connection] = []
        self._open = 0
        self._changed = asyncio.Condition()

    @property
    def cap(self) -> int:
        """This process's share of the domain's connections: the cap split between the live
        MTA processes (rounded up; the shared slots keep the total exact)."""
        return max(1, -(-self.shape.max_connections // self._processes()))

    @property
    def open_connections(self) -> int:
        return self._open

    async def send(
        self,
        route: Route,
        sender: str,
        recipient: str,
        data: bytes,
        on_wire: Callable[[], None] | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> Reply:
        """Deliver one message; `on_wire` is called at the point from which an interruption
        may leave the peer holding the message: just before its first byte of content (with
        aiosmtplib, as the transaction starts). `wanted` is asked once a connection is ours,
        since a message may wait a while for one: False gives the connection back unused
        and raises NotWanted (its campaign was paused meanwhile, say)."""
        retried = False
        while True:
            try:
                conn = await self._acquire(route)
            except _NoConnection as exc:
                return exc.reply
            if wanted is not None and not wanted():
                await self._return_unused(conn)
                raise NotWanted
            if conn.submission is not None:
                if on_wire is not None:
                    on_wire()
                return await self._submit(conn, sender, recipient, data)
            try:
                return await self._deliver(
                    conn,
                    sender,
                    recipient,
                    data,
                    retry=conn.sent > 0 and not retried,
                    on_wire=on_wire,
                )
            except _Retry:
                retried = True  # once: a second failure is the peer's answer, deferred

    async def _deliver(
        self,
        conn: _Connection,
        sender: str,
        recipient: str,
        data: bytes,
        retry: bool,
        on_wire: Callable[[], None] | None,
    ) -> Reply:
        """One transaction with the delivery client; `on_wire` is called just before the
        message's first byte is written (not before its MAIL: under PIPELINING a message may
        wait behind another's end of data, and one cut off there was never offered)."""
        assert conn.client is not None
        client = conn.client
        released = False
        try:
            try:
                submitted = await client.submit(sender, [recipient], data, on_wire)
            except NotAscii as exc:
                return Reply(553, f"5.6.7 address refused before sending: {exc}")
            except ValueError as exc:  # control characters in an address
                return Reply(553, f"5.1.3 address refused before sending: {exc}")
            except NotSent as exc:
                if retry:
                    raise _Retry from exc
                return Reply(None, f"4.4.2 {conn.host}: {exc}")
            except TransactionFailed as exc:  # the message may have arrived: retry later
                return Reply(None, f"4.4.2 {conn.host}: {exc}")
            tls = client.tls_info
            if not submitted.done:
                # Only the end of data's reply is outstanding: the next message may go on the
                # wire behind it.
                released = True
                await self._release(conn, client.usable)
            try:
                delivery = await submitted.delivery()
            except TransactionFailed as exc:
                return Reply(None, f"4.4.2 {conn.host}: {exc}", tls=tls)
            reply = delivery[recipient]
            return reply if tls is None else dataclasses.replace(reply, tls=tls)
        except BaseException:
            # Cut off mid-transaction (a second stop signal cancels us): the peer may be inside
            # DATA, where a polite QUIT would be read as message text and then waited on for a
            # whole command timeout. Drop the connection; the message goes back to the queue.
            # Once handed back, the connection is another message's: it is left alone.
            if not released:
                client.close()
            raise
        finally:
            if not released:
                await self._release(conn, client.usable)

    async def _submit(self, conn: _Connection, sender: str, recipient: str, data: bytes) -> Reply:
        """One transaction through aiosmtplib (a route with credentials)."""
        assert conn.submission is not None
        reusable = False
        try:
            reply, reusable = await self._transaction(
                conn.submission, conn.host, sender, recipient, data
            )
            return reply
        except BaseException:
            conn.submission.close()  # as in _deliver
            raise
        finally:
            await self._release(conn, reusable)

    async def _acquire(self, route: Route) -> _Connection:
        """An idle live connection, else a new one once this domain's cap allows."""
        while True:
            async with self._changed:
                conn, dead = self._take_idle()
                reserved = conn is None and not dead and self._open < self.cap
                if reserved:
                    self._open += 1
                elif conn is None and not dead:
                    await self._changed.wait()
                    continue
            for gone in dead:  # closed by the peer while idle
                await self._give_back_slots(gone.slots)
            if conn is not None:
                return conn
            if reserved:
                return await self._open_new(route)

    def _take_idle(self) -> tuple[_Connection | None, list[_Connection]]:
        """Pop idle connections until a live one; the dead ones stop counting. Lock held."""
        dead: list[_Connection] = []
        found = None
        while self._idle and found is None:
            conn = self._idle.pop()
            if conn.alive:
                found = conn
            else:
                dead.append(conn)
        if dead:
            self._open -= len(dead)
            self._changed.notify(len(dead))
        return found, dead

    async def _open_new(self, route: Route) -> _Connection:
        held: list[tuple[str, int]] = []
        try:
            if self._slots is not None:
                # One slot of every capped level (the domain's, its site's and provider's
                # from this source), always in the same order, so two processes cannot each
                # hold a part the other needs.
                for key, cap in self.shape.slots:
                    slot = await self._slots.acquire(key, cap, SLOT_WAIT)
                    if slot is None:
                        raise DomainBusy(key)
                    held.append((key, slot))
            connection = await self._connect(route)
            connection.slots = held
            return connection
        except BaseException:
            await self._give_back_slots(held)
            async with self._changed:
                self._open -= 1
                self._changed.notify()
            raise

    async def _give_back_slots(self, held: list[tuple[str, int]]) -> None:
        if self._slots is None:
            return
        for key, slot in held:
            try:
                await self._slots.release(key, slot)
            except Exception:  # best effort, and never in the way of the local count
                log.warning(
                    "could not release a connection slot; it will expire",
                    exc_info=True,
                    extra={"action": "release_slot", "domain": key},
                )

    async def _return_unused(self, conn: _Connection) -> None:
        async with self._changed:
            self._idle.append(conn)
            self._changed.notify()

    async def _release(self, conn: _Connection, reusable: bool) -> None:
        conn.sent += 1
        # Above this process's share (another MTA process, maybe on another host, came up
        # since the connection opened): close it rather than reuse it, or a busy process,
        # whose connections are never idle long enough for close_idle, would keep the whole
        # cap until messages_per_connection ran out and the newcomer's mail would wait.
        within_share = self._open <= self.cap
        if (
            reusable
            and within_share
            and conn.sent < self.shape.messages_per_connection
            and conn.alive
        ):
            conn.idle_since = time.monotonic()
            async with self._changed:
                self._idle.append(conn)
                self._changed.notify()
            return
        await _close(conn, self._settings.command_timeout)
        await self._give_back_slots(conn.slots)
        async with self._changed:
            self._open -= 1
            self._changed.notify()

    async def close_idle(self, older_than: float = 0.0) -> None:
        """Close idle connections that waited at least `older_than` seconds, and any idle
        ones above this process's share: when another MTA process starts, the first gives
        back the slots it no longer has a right to at once rather than after idle_timeout,
        which would leave the newcomer's messages bouncing off DomainBusy meanwhile."""
        now = time.monotonic()
        async with self._changed:
            stale = [c for c in self._idle if now - c.idle_since >= older_than]
            kept = [c for c in self._idle if now - c.idle_since < older_than]
            over = max(0, self._open - len(stale) - self.cap)
            if over:
                kept.sort(key=lambda c: c.idle_since)  # the longest idle go first
                stale += kept[:over]
                kept = kept[over:]
            self._idle = kept
        await asyncio.gather(*(_close(c, self._settings.command_timeout) for c in stale))
        for conn in stale:
            await self._give_back_slots(conn.slots)
        if stale:
            async with self._changed:
                self._open -= len(stale)
                self._changed.notify(len(stale))

    async def _connect(self, route: Route) -> _Connection:
        if route.username:
            return await self._connect_submission(route)
        settings = self._settings
        timeouts = Timeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            data=settings.data_timeout,
        )
        last = Reply(None, f"4.4.1 no host to connect to for {self.domain}")
        names = route.names or tuple("" for _ in route.hosts)
        for (host, port), name in zip(route.hosts, names, strict=True):
            try:
                client = await SMTPClient.connect(
                    host,
                    port,
                    local_hostname=self.shape.ehlo or settings.hostname,
                    timeouts=timeouts,
                    local_address=self.shape.source_address,
                )
            except RefusedError as exc:
                last = exc.reply
            except (SMTPClientError, OSError, TimeoutError) as exc:
                last = Reply(None, f"4.4.1 connection to {host}:{port} failed: {exc!r}")
            else:
                try:
                    await self._secure_client(client, route, name)
                except _Unverified as exc:
                    # MTA-STS: this MX cannot prove it is one; the next may (RFC 8461 5.1).
                    await client.quit()
                    last = exc.reply
                    continue
                except BaseException:
                    await client.quit()
                    raise
                return _Connection(host, client=client)
            if last.permanent and last.code != 554:
                break  # a 5xx other than "no service here" answers for every MX alike
        raise _NoConnection(last)

    async def _secure_client(self, client: SMTPClient, route: Route, name: str) -> None:
        if self.shape.verify:
            await self._verified(client, name)
            return
        must = self.shape.tls_required or route.require_starttls
        if client.supports("starttls") and (self._settings.opportunistic_tls or must):
            try:
                await client.starttls(_opportunistic_tls())
            except (SMTPClientError, OSError, ssl.SSLError, TimeoutError) as exc:
                raise _NoConnection(Reply(None, f"4.7.0 STARTTLS failed: {exc!r}")) from exc
            return
        if must:
            raise _NoConnection(
                Reply(
                    None,
                    f"4.7.10 TLS required for {self.domain} but the peer does not offer STARTTLS",
                )
            )

    async def _verified(self, client: SMTPClient, name: str) -> None:
        """TLS with a certificate valid for MX `name`, as an enforced MTA-STS policy asks."""
        if not client.supports("starttls"):
            raise _Unverified(
                Reply(None, f"4.7.5 MTA-STS policy enforced, but {name} does not offer STARTTLS")
            )
        try:
            await client.starttls(verifying_context(self._settings), server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            raise _Unverified(
                Reply(
                    None,
                    f"4.7.5 MTA-STS policy enforced, but the certificate of {name} does not "
                    f"verify: {exc.verify_message}",
                )
            ) from exc
        except (SMTPClientError, OSError, ssl.SSLError, TimeoutError) as exc:
            raise _Unverified(
                Reply(None, f"4.7.5 MTA-STS policy enforced, TLS with {name} failed: {exc!r}")
            ) from exc

    async def _connect_submission(self, route: Route) -> _Connection:
        settings = self._settings
        last = Reply(None, f"4.4.1 no host to connect to for {self.domain}")
        for host, port in route.hosts:
            implicit = port == IMPLICIT_TLS_PORT
            client = aiosmtplib.SMTP(
                hostname=host,
                port=port,
                local_hostname=settings.hostname,
                timeout=settings.connect_timeout,
                start_tls=False,
                use_tls=implicit,
                tls_context=self._tls_context() if implicit else None,
                validate_certs=self.shape.verify,
            )
            try:
                await client.connect()
                await client.ehlo(timeout=settings.command_timeout)
                if not implicit:
                    await self._secure(client, route)
                if route.username:
                    await client.login(
                        route.username, route.password, timeout=settings.command_timeout
                    )
                return _Connection(host, submission=client)
            except _NoConnection:
                await _close_submission(client, settings.command_timeout)
                raise
            except aiosmtplib.SMTPAuthenticationError as exc:
                # Our credentials are wrong: an operator's problem, never the recipient's bounce.
                await _close_submission(client, settings.command_timeout)
                raise _NoConnection(
                    Reply(None, f"4.7.8 {host} refused our credentials: {exc.code} {exc.message}")
                ) from exc
            except aiosmtplib.SMTPResponseException as exc:
                last = Reply(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                last = Reply(None, f"4.4.1 connection to {host}:{port} failed: {exc}")
            await _close_submission(client, settings.command_timeout)
            if last.permanent and last.code != 554:
                break  # a 5xx other than "no service here" answers for every MX alike
        raise _NoConnection(last)

    def _tls_context(self) -> ssl.SSLContext:
        """Verified against the host name (and [mta] tls_ca_file) where the shape asks for
        it (an identity's relay, which gets our credentials), opportunistic otherwise."""
        return verifying_context(self._settings) if self.shape.verify else _opportunistic_tls()

    async def _secure(self, client: aiosmtplib.SMTP, route: Route) -> None:
        must = self.shape.tls_required or route.require_starttls
        if client.supports_extension("starttls") and (self._settings.opportunistic_tls or must):
            try:
                await client.starttls(
                    tls_context=self._tls_context(), timeout=self._settings.command_timeout
                )
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                raise _NoConnection(Reply(None, f"4.7.0 STARTTLS failed: {exc}")) from exc
            return
        if must:
            raise _NoConnection(
                Reply(
                    None,
                    f"4.7.10 TLS required for {self.domain} but the peer does not offer STARTTLS",
                )
            )

    async def _transaction(
        self, client: aiosmtplib.SMTP, host: str, sender: str, recipient: str, data: bytes
    ) -> tuple[Reply, bool]:
        """One MAIL/RCPT/DATA; returns the reply and whether the connection stays usable."""
        try:
            _, message = await client.sendmail(
                sender, [recipient], data, timeout=self._settings.data_timeout
            )
            return Reply(250, message), True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return Reply(refused.code, refused.message), refused.code != 421
        except aiosmtplib.SMTPResponseException as exc:
            return Reply(exc.code, exc.message), exc.code != 421
        except ValueError as exc:  # aiosmtplib refuses control characters in addresses
            return Reply(553, f"5.1.3 address refused before sending: {exc}"), True
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Reply(None, f"4.4.2 {host}: {type(exc).__name__}: {exc}"), False


async def _close(conn: _Connection, timeout: float) -> None:
    if conn.client is not None:
        await conn.client.quit()
    if conn.submission is not None:
        await _close_submission(conn.submission, timeout)


async def _close_submission(client: aiosmtplib.SMTP, timeout: float) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=timeout)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


class Pools:
    """Every destination domain's pool, and the reaper that closes idle connections."""

    def __init__(self, settings: MtaSettings, slots: ConnectionSlots | None = None) -> None:
        self._settings = settings
        self._slots = slots
        self.processes = 1  # live MTA processes on the database, kept fresh by the worker
        self._pools: dict[str, DomainPool] = {}

    def __getitem__(self, domain: str) -> DomainPool:
        pool = self._pools.get(domain)
        if pool is None:
            rule = self._settings.rule_for(domain)
            pool = DomainPool(domain, rule, self._settings, self._slots, lambda: self.processes)
            self._pools[domain] = pool
        return pool

    def shaped(self, shape: Shape, rule: ThrottleRule) -> DomainPool:
        """The pool `shape` names; a pool already open takes the shape's current limits (an
        automation rule may have lowered them)."""
        pool = self._pools.get(shape.key)
        if pool is None:
            pool = DomainPool(
                shape.key, rule, self._settings, self._slots, lambda: self.processes, shape
            )
            self._pools[shape.key] = pool
        else:
            pool.shape = shape
        return pool

    async def reap_idle(self) -> None:
        """Side task: close connections idle longer than the idle timeout, and idle ones
        above this process's share of a cap, forever."""
        interval = min(self._settings.idle_timeout / 2, 1.0)
        while True:
            await asyncio.sleep(interval)
            for pool in list(self._pools.values()):
                await pool.close_idle(self._settings.idle_timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(p.close_idle() for p in self._pools.values()))
