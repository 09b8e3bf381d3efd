"""`penguinmails inbound`: the SMTP server for the bounce domain, closing the loop.

Every message we send has a signed VERP return path (`b-<queue id>-<mac>@<bounce domain>`)
and a mailto: unsubscribe address (`u-...`). What comes back to those addresses, or to any
other address on a configured bounce domain (a feedback-loop address, a Reply-To), is read
here (inbound.classify) and recorded against the original message (inbound/queries.sql).

SMTP:
- RCPT is accepted for the bounce domains only (any local part: FBL and reply addresses
  live there too); anything else is 550 5.7.1, we are not a relay. At most 100 recipients.
- Size: [inbound] max_message_size, announced in EHLO and enforced with 552.
- At most [inbound] max_sessions connections; one more gets 421 and is closed. Per client
  address (an IPv6 client by its /64), as Postfix's anvil: at most max_sessions_per_client
  at once and client_connection_rate per client_rate_window seconds, else 421 4.7.0 and
  closed, so one host cannot hold every session or churn through them.
- STARTTLS when a certificate is configured, never required.
- 250 only once what the mail changes is committed; a database problem answers 451 so the
  sender retries (recording is idempotent, so a retry after a lost 250 counts once). Mail
  that cannot be stored as it is (a NUL, 8-bit bytes in text) is stored without them; what
  still fails for this mail alone gets 554, never a 4xx that would be retried for days.

Matching, per envelope recipient, strongest evidence first:
1. the recipient itself, or an X-Original-To/Delivered-To alias when the recipient is not
   one of our addresses: `u-` is an unsubscribe for its message; `b-` names the message;
2. our signed address quoted in the returned original (Return-Path, List-Unsubscribe);
3. a Message-ID the mail quotes (returned headers, In-Reply-To, References) that is one of
   ours. Everyone who saw the message, and everyone on a reply thread (References), knows
   it, so it proves nothing: a report matched this way is recorded (matched_by
   'message_id') when it is about the message's own recipient, else dropped, and either way
   changes no status, writes no event, suppresses no one. A reply or automatic reply so
   matched counts as one (its event says matched_by), since replies reach the Reply-To and
   cannot carry the signed address; a reply changes no state and suppresses no one.
A tenant's own inbound address (`in-<token>@<bounce domain>`, GET /api/v1/settings/inbound)
is matched the same way, for that tenant's messages only: a reply to one of them sent there
counts as the reply it is. Any other mail to the address (a first contact, a forward, a
reply quoting another tenant's message) is the tenant's all the same: kept whole with no
message and announced as `email.received`, never dropped. An address with an unknown or
rotated token is like any other unmatched address.
Only 1 and 2, our signed address, bounce, suppress or unsubscribe. A `b-`/`u-` address whose
MAC does not verify is forged: the mail is accepted and dropped with a logged reason, without
falling back to Message-IDs. Unmatched mail is dropped the same way. Accepting rather than
refusing tells a prober nothing and spares the remote a double bounce; either way nothing in
the database changes.

Choices made here, and why:
- A `failed` DSN moves the message from 'sent' to 'bounced' (it did not arrive; the status
  should say so), keeping sent_at; only a 5.x.x status suppresses. A `delayed` DSN is
  `email.deferred` with bounce_type soft, changes nothing else.
- The suppressed address is always the original's stored recipient, never one the report
  names: a forwarded or crafted report cannot suppress someone we did not mail.
- A reply or automatic reply is kept whole for the original's tenant (its mode row): fields,
  text and html bodies, headers, the raw bytes and each attachment (inbound/mail.py), in
  inbound_emails, with an `email.received` event naming it (`inbound_id`: inb_...), in the
  same statement as its log row, so behind the same idempotency and before the 250. Reports
  (DSN, ARF) are not kept: what they say is recorded, and the mail only as a sha256.
- Idempotency per (message, kind): one bounce, one delay, one complaint, one unsubscribe per
  message; replies per their own Message-ID, so each distinct reply counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from inbound.classify import Inbound, Verdict, classify, unsubscribe_verdict
from inbound.mail import WholeMail, read_mail
from inbound.metrics import InboundMetrics
from penguinmails.config import InboundSettings, Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load
from penguinmails.verp import Verp

SQL = load("inbound")
log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
RETURN_PATH_TTL = 60.0  # seconds a return-path lookup is kept (InboundServer.accepts)
SESSION_TIMEOUT = 120.0  # seconds of silence before a session is dropped
_SIGNED_SHAPE = re.compile(r"^[bu]-[0-9]+-", re.IGNORECASE)
# A tenant's own inbound address (tenants.inbound_token, 20 hex characters).
_TENANT_ADDRESS = re.compile(r"^in-([0-9a-f]{20})@", re.IGNORECASE)
_DB_ERRORS = DATABASE_ERRORS
# Replies and automatic replies are kept whole for the tenant (inbound_emails); reports are
# ours to act on, and stay a log row with a sha256.
KEPT_WHOLE = frozenset({"reply", "auto_reply"})


@dataclass(frozen=True)
class Match:
    message_id: int  # queue id
    tenant_id: int  # the original's tenant row
    recipient: str  # the original's recipient
    matched_by: str
    unsubscribe: bool = False


class _Dropped(Exception):
    """Mail that names no message of ours; `classification` is unmatched or forged."""

    def __init__(self, classification: str, reason: str) -> None:
        super().__init__(reason)
        self.classification = classification
        self.reason = reason


class InboundHandler:
    def __init__(self, server: InboundServer) -> None:
        self._server = server

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        try:
            accepted = await self._server.accepts(domain)
        except _DB_ERRORS:
            return "451 4.3.0 temporary local problem, try again later"
        if not accepted:
            self._server.metrics.refused.labels("relaying").inc()
            return "550 5.7.1 relaying denied"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail_from = (envelope.mail_from or "").strip().strip("<>")
        inbound = await asyncio.to_thread(classify, raw, mail_from)
        mail = None
        if inbound.kind in KEPT_WHOLE or any(
            _TENANT_ADDRESS.match(r.strip().strip("<>")) for r in envelope.rcpt_tos
        ):
            try:
                mail = await asyncio.to_thread(read_mail, raw)
            except Exception:  # a parser bug: the reply still counts, without its copy
                log.exception(
                    "inbound reply could not be read whole", extra={"action": "inbound_parse"}
                )
        try:
            for rcpt in dict.fromkeys(r.lower() for r in envelope.rcpt_tos):
                await self._server.receive(rcpt, mail_from, inbound, mail)
        except asyncpg.DataError as exc:
            # The database refuses these values (SQL class 22): it would refuse them on every
            # retry too, so a 4xx would only bring the same mail back for days.
            log.error(
                "inbound mail cannot be stored",
                extra={"action": "inbound_store", "error": str(exc) or type(exc).__name__},
            )
            return "554 5.6.0 message cannot be processed"
        except _DB_ERRORS as exc:
            log.warning(
                "inbound could not record a message",
                extra={"action": "inbound_store", "error": str(exc) or type(exc).__name__},
            )
            return "451 4.3.0 temporary local problem, try again later"
        except Exception:
            # A bug of ours that this mail sets off: it would set it off again on every retry.
            log.exception("inbound mail could not be processed", extra={"action": "inbound_store"})
            return "554 5.6.0 message cannot be processed"
        return "250 2.0.0 OK"

    async def handle_exception(self, error: Exception) -> str:
        log.error(
            "inbound session error",
            exc_info=error,
            extra={"action": "inbound_session", "error": type(error).__name__},
        )
        return "451 4.3.0 temporary local problem, try again later"


_REFUSALS = {
    "sessions": "too many connections",
    "client_sessions": "too many connections from your address",
    "client_rate": "too many connections from your address in a short time",
}


class _InboundSMTP(SMTP):
    """Admitted against the session limits when its connection is made, or answered 421 and
    closed; an admitted session gives its slot back exactly once."""

    def __init__(self, owner: InboundServer, handler: InboundHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        self._client: str | None = None  # set while this session holds a slot
        self._refused = False
        self._started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._started:  # not the second call STARTTLS makes, with the TLS transport
            self._started = True
            client = client_key(transport.get_extra_info("peername"))
            refusal = self._owner.admit(client)
            if refusal is not None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(
                    f"421 4.7.0 {self.hostname} {_REFUSALS[refusal]}, try again later\r\n".encode()
                )
                transport.close()
                return
            self._client = client
        self._owner.transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # never started as an SMTP session: nothing of it to tear down
        if self._client is not None:
            self._owner.release(self._client)
            self._client = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()


def client_key(peer: Any) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one host
    commonly holds a whole /64, and a per-address limit would not hold it back)."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientLimits:
    """Sessions open and connections made per client, as Postfix's anvil counts them: the
    rate in fixed windows that start at a client's first connection, refused attempts
    included (a client that keeps hammering stays refused). Forgets a client once it has no
    session open and its window is over, so a scan of many addresses leaves nothing behind."""

    def __init__(self, settings: InboundSettings, clock: Callable[[], float]) -> None:
        self._max_sessions = settings.max_sessions_per_client
        self._rate = settings.client_connection_rate
        self._window = settings.client_rate_window
        self._clock = clock
        self._sessions: dict[str, int] = {}
        self._windows: dict[str, tuple[float, int]] = {}  # client -> (window start, count)
        self._swept = clock()

    def attempt(self, client: str) -> bool:
        """Count one connection from `client`; False when it is over its rate."""
        if not self._rate:
            return True
        now = self._clock()
        if now - self._swept >= self._window:
            self._swept = now
            self._windows = {c: w for c, w in self._windows.items() if now - w[0] < self._window}
        start, count = self._windows.get(client, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        self._windows[client] = (start, count + 1)
        return count < self._rate

    def has_room(self, client: str) -> bool:
        return not self._max_sessions or self._sessions.get(client, 0) < self._max_sessions

    def opened(self, client: str) -> None:
        self._sessions[client] = self._sessions.get(client, 0) + 1

    def closed(self, client: str) -> None:
        left = self._sessions.get(client, 0) - 1
        if left > 0:
            self._sessions[client] = left
        else:
            self._sessions.pop(client, None)


class InboundServer:
    """The listener and what it records: `async with InboundServer(pool, settings) as s`, or
    `await start()` and later `await stop()`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: InboundMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.settings = settings.inbound
        self.clients = ClientLimits(self.settings, clock)
        self.hostname = settings.mta.hostname
        self.domains = frozenset(settings.inbound_domains())
        # Sending domains' own return paths, looked up on first RCPT and kept a minute (an
        # answer either way), so a newly verified domain's bounces arrive within the minute.
        self._return_paths: dict[str, tuple[float, bool]] = {}
        self._clock = clock
        self.verp = Verp.from_settings(settings)
        self.metrics = metrics or InboundMetrics()
        self.transports: set[asyncio.BaseTransport] = set()
        self._open = 0
        self._idle = asyncio.Event()  # set while no session is open
        self._idle.set()
        self._tls = _tls_context(settings)
        self.starttls = self._tls is not None
        self._server: asyncio.Server | None = None
        self._handler = InboundHandler(self)
        self._grace = settings.mta.shutdown_grace
        self.port = 0

    async def accepts(self, domain: str) -> bool:
        """Mail to `domain` is ours: [inbound] bounce_domains, or a sending domain's return
        path (RETURN_PATH_TTL seconds cached)."""
        if domain in self.domains:
            return True
        cached = self._return_paths.get(domain)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        found = bool(await self.pool.fetchval(SQL["is_return_path_domain"], domain))
        if len(self._return_paths) > 10_000:  # names tried by strangers: forget them all
            self._return_paths.clear()
        self._return_paths[domain] = (now + RETURN_PATH_TTL, found)
        return found

    async def __aenter__(self) -> InboundServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(self._grace)

    async def start(self) -> InboundServer:
        host, port = split_hostport(self.settings.listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=host, port=port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _protocol(self) -> asyncio.BaseProtocol:
        return _InboundSMTP(
            self,
            self._handler,
            hostname=self.hostname,
            data_size_limit=self.settings.max_message_size,
            enable_SMTPUTF8=True,
            tls_context=self._tls,
            require_starttls=False,
            timeout=SESSION_TIMEOUT,
        )

    def admit(self, client: str) -> str | None:
        """Take a session slot for `client`, or say why not (a `refused` metric label)."""
        within_rate = self.clients.attempt(client)  # every attempt counts, refused or not
        if self._open >= self.settings.max_sessions:
            refusal: str | None = "sessions"
        elif not self.clients.has_room(client):
            refusal = "client_sessions"
        elif not within_rate:
            refusal = "client_rate"
        else:
            refusal = None
        if refusal is not None:
            self.metrics.refused.labels(refusal).inc()
            log.info(
                "inbound connection refused",
                extra={"action": "inbound_refuse", "reason": refusal, "client": client},
            )
            return refusal
        self._open += 1
        self.clients.opened(client)
        self._idle.clear()
        self.metrics.sessions.set(self._open)
        return None

    def release(self, client: str) -> None:
        self._open -= 1
        self.clients.closed(client)
        self.metrics.sessions.set(self._open)
        if self._open == 0:
            self._idle.set()

    @property
    def sessions(self) -> int:
        return self._open

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening; give open sessions `grace` seconds to finish, then cut them."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for transport in list(self.transports):
            transport.abort()  # type: ignore[attr-defined]
        self.transports.clear()
        await self._server.wait_closed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 1.0)  # connection_lost of what was cut
        self._server = None

    async def receive(
        self, rcpt: str, mail_from: str, inbound: Inbound, mail: WholeMail | None = None
    ) -> None:
        """Record what `inbound` means for the message `rcpt` (and the mail) names; a reply
        or automatic reply read whole (`mail`) is kept for the message's tenant too. Mail to
        a tenant's inbound address that answers none of that tenant's messages is kept whole
        for the tenant."""
        tenant_id = await self._tenant_of(rcpt)
        try:
            match = await self._match(rcpt, inbound)
            if tenant_id is not None and match.tenant_id != tenant_id:
                # Addressed to one tenant, quoting another's message: it is the addressee's
                # mail, and proves nothing about the other tenant's recipient.
                raise _Dropped("unmatched", "answers another tenant's message")
            verdict = _verdict(inbound, match)
        except _Dropped as dropped:
            if tenant_id is not None and mail is not None:
                await self._keep_for_tenant(tenant_id, rcpt, mail_from, inbound, mail)
                return
            self.metrics.messages.labels(dropped.classification, "dropped").inc()
            log.info(
                "inbound mail dropped",
                extra={
                    "action": "inbound_drop",
                    "classification": dropped.classification,
                    "reason": dropped.reason,
                    "rcpt": rcpt,
                    "mail_from": mail_from,
                    "kind": inbound.kind,
                },
            )
            return
        detail = _storable_data({**verdict.data, "matched_by": match.matched_by})
        kept = mail if verdict.classification in KEPT_WHOLE else None
        row = await self.pool.fetchrow(
            SQL["inbound_record"],
            match.message_id,
            verdict.classification,
            _storable(verdict.dedupe_key),
            _storable(verdict.reason)[:500],
            match.matched_by,
            _storable(mail_from)[:320],
            _storable(rcpt)[:320],
            _storable(inbound.header_message_id) or None,
            inbound.sha256,
            detail,
            verdict.first_only,
            verdict.event_type,
            verdict.suppress,
            _suppression_detail(verdict),
            verdict.bounce,
            verdict.enhanced_status,
            verdict.smtp_code,
            _storable(verdict.diagnostic or "")[:1000] or None,
            *_whole_mail_arguments(kept),
        )
        result = "recorded" if row["logged"] else "duplicate"
        self.metrics.messages.labels(verdict.classification, result).inc()
        log.info(
            "inbound mail recorded" if row["logged"] else "inbound mail already recorded",
            extra={
                "action": "inbound_record",
                "classification": verdict.classification,
                "reason": verdict.reason,
                "queue_id": match.message_id,
                "matched_by": match.matched_by,
                "events": row["events"],
                "suppressed": row["suppressed"],
                "bounced": row["bounced"],
                "inbound_id": row["inbound_id"],
            },
        )

    async def _tenant_of(self, rcpt: str) -> int | None:
        """The tenant row whose inbound address `rcpt` is, if it is one."""
        shape = _TENANT_ADDRESS.match(rcpt.strip().strip("<>"))
        if shape is None:
            return None
        tenant_id: int | None = await self.pool.fetchval(
            SQL["inbound_tenant"], shape.group(1).lower()
        )
        return tenant_id

    async def _keep_for_tenant(
        self, tenant_id: int, rcpt: str, mail_from: str, inbound: Inbound, mail: WholeMail
    ) -> None:
        # The mail's own Message-ID names it across deliveries; without one, its bytes do.
        dedupe = inbound.header_message_id or inbound.sha256.hex()
        row = await self.pool.fetchrow(
            SQL["inbound_record_tenant_mail"],
            tenant_id,
            _storable(f"inbound:{dedupe}")[:600],
            "mail to the tenant's inbound address",
            _storable(mail_from)[:320],
            _storable(rcpt)[:320],
            _storable(inbound.header_message_id) or None,
            inbound.sha256,
            *_whole_mail_arguments(mail)[1:],
            inbound.kind == "auto_reply",
        )
        result = "recorded" if row["logged"] else "duplicate"
        self.metrics.messages.labels("inbound", result).inc()
        log.info(
            "inbound mail kept for its tenant" if row["logged"] else "inbound mail already kept",
            extra={
                "action": "inbound_record",
                "classification": "inbound",
                "tenant_id": tenant_id,
                "rcpt": rcpt,
                "inbound_id": row["inbound_id"],
            },
        )

    async def _match(self, rcpt: str, inbound: Inbound) -> Match:
        # The envelope recipient, or where the mail was addressed before it reached us.
        for address, source in [(rcpt, "verp"), *((a, "alias") for a in inbound.aliases)]:
            found = self._signed(address)
            if found is not None:
                queue_id, unsubscribe = found
                return await self._by_queue_id(
                    queue_id, "unsubscribe" if unsubscribe else source, unsubscribe
                )
        for address in inbound.returned_addresses:
            found = self._signed(address)
            if found is not None:
                return await self._by_queue_id(found[0], "returned_address")
        if inbound.message_ids:
            row = await self.pool.fetchrow(
                SQL["inbound_message_by_header_id"], [_storable(i) for i in inbound.message_ids]
            )
            if row is not None:
                return Match(row["id"], row["tenant_id"], row["recipient"], "message_id")
            raise _Dropped("unmatched", "no message of ours has the Message-ID(s) it quotes")
        raise _Dropped("unmatched", "no signed address and no Message-ID of ours")

    def _signed(self, address: str) -> tuple[int, bool] | None:
        """(queue id, is unsubscribe) for one of our signed addresses; None for any other
        address; _Dropped for an address shaped like ours whose MAC does not verify."""
        local = address.strip().strip("<>").rpartition("@")[0]
        if not _SIGNED_SHAPE.match(local):
            return None
        unsubscribe = local[0].lower() == "u"
        decode = self.verp.decode_unsubscribe if unsubscribe else self.verp.decode
        queue_id = decode(address)
        if queue_id is None:
            raise _Dropped("forged", f"signature does not verify: {address[:120]}")
        return queue_id, unsubscribe

    async def _by_queue_id(self, queue_id: int, how: str, unsubscribe: bool = False) -> Match:
        row = await self.pool.fetchrow(SQL["inbound_message"], queue_id)
        if row is None:
            raise _Dropped("unmatched", f"message {queue_id} no longer exists")
        return Match(queue_id, row["tenant_id"], row["recipient"], how, unsubscribe)


def _verdict(inbound: Inbound, match: Match) -> Verdict:
    """What to record; only a match through our signed address may act on the message."""
    if match.unsubscribe:
        return unsubscribe_verdict()
    if match.matched_by != "message_id":
        return inbound.verdict_for(match.recipient)
    verdict = inbound.unsigned_verdict_for(match.recipient)
    if verdict is None:
        raise _Dropped(
            "unmatched",
            f"quotes the Message-ID of message {match.message_id}, but is about another recipient",
        )
    return verdict


def _storable(value: str) -> str:
    """`value` as Postgres text can hold it: no NUL, and valid UTF-8 (raw 8-bit bytes that
    arrived as surrogates are decoded, or replaced). A value it refuses would be refused on
    every retry of the same mail."""
    try:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\0", "")


def _storable_data(value: Any) -> Any:
    """`_storable` through a JSON document (jsonb refuses \\u0000 as well)."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return {_storable(str(k)): _storable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_data(v) for v in value]
    return value


def _whole_mail_arguments(mail: WholeMail | None) -> list[Any]:
    """$19..$29 of inbound_record: whether to keep the mail, then its parts, storable."""
    if mail is None:
        return [False, "", [], [], "", None, None, [], b"", [], []]
    return [
        True,
        _storable(mail.from_email)[:320],
        [_storable(a)[:320] for a in mail.to[:MAX_RECIPIENTS]],
        [_storable(a)[:320] for a in mail.cc[:MAX_RECIPIENTS]],
        _storable(mail.subject),
        None if mail.text is None else _storable(mail.text),
        None if mail.html is None else _storable(mail.html),
        [[_storable(name), _storable(value)] for name, value in mail.headers],
        mail.raw,
        _storable_data([a.metadata(i) for i, a in enumerate(mail.attachments)]),
        [a.content for a in mail.attachments],
    ]


def _suppression_detail(verdict: Verdict) -> str | None:
    if verdict.suppress is None:
        return None
    if verdict.suppress == "unsubscribed":
        return "mailto"  # the tracker records its method here too
    return _storable(verdict.diagnostic or verdict.reason)[:500]


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    inbound = settings.inbound
    if inbound.tls_cert is None or inbound.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(inbound.tls_cert, inbound.tls_key)
    return context


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: stop listening, let sessions finish within a bound."""
    from penguinmails.lifecycle import install_stop_signals, role_pool
    from penguinmails.observability import ops_app, start_ops_server
    from penguinmails.systemd import notify

    async with role_pool(settings) as (pool, _):
        stopping = asyncio.Event()
        ops = None
        async with InboundServer(pool, settings) as server:
            install_stop_signals(stopping.set)
            if settings.inbound.metrics_listen:
                app = ops_app(pool, server.metrics.registry)
                ops = await start_ops_server(app, settings.inbound.metrics_listen)
            log.info(
                "inbound started",
                extra={
                    "action": "inbound_start",
                    "listen": settings.inbound.listen,
                    "domains": sorted(server.domains),
                    "starttls": server.starttls,
                    "metrics": settings.inbound.metrics_listen or None,
                },
            )
            notify("READY=1")
            try:
                await stopping.wait()
            finally:
                if ops is not None:
                    await ops.cleanup()
