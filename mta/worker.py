"""The MTA worker: claim leased batches, deliver them, write outcomes, shut down cleanly.

A slot is taken before work is claimed (at most `max_in_flight` messages leased by this
worker and not yet committed), so a worker never holds leases it cannot work on. Idle, it
waits for a NOTIFY from the queue, a freed slot, or the poll interval. Side tasks (the
listener, the lease heartbeat, the outcome writer, the idle-connection reaper) run in one
TaskGroup: if one dies, the worker stops instead of limping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import asyncpg

from mta import queue
from mta.compose import ComposeError, Composer
from mta.domains import KeyUnavailable
from mta.metrics import MtaMetrics
from mta.mtasts import MtaSts, Policy
from mta.outcomes import Outcome, Reply, decide
from mta.relays import Relays, RelayUnavailable
from mta.routing import Route, RouteError, Router
from mta.shaping import Automation, Level, Scope, Shaper, load_rules
from mta.shared import MAX_WAIT, SharedShaping, Suspension, scope_key
from mta.shared import SQL as SHAPING_SQL
from mta.slots import ConnectionSlots
from mta.smtp import DomainBusy, DomainPool, NotWanted, Pools, Shape
from mta.sources import Egress, Source, check_sources
from mta.throttle import Throttles
from penguinmails.buffer import Failure, GroupCommit
from penguinmails.config import Settings, ThrottleRule
from penguinmails.database import DATABASE_ERRORS, transaction_pooled

log = logging.getLogger(__name__)

KEY_RETRY_SECONDS = 30.0
BUSY_RETRY_SECONDS = 1.0
# How long a release is retried while the database is away (0.5 s, doubling) before the
# message is left to its lease.
RELEASE_PATIENCE = 30.0
PRESENCE_SECONDS = 2.0  # how often a worker says it is alive; 3 missed beats and it is gone
MAX_SHAPES = 4096  # distinct (site, source) shapes kept between shaping changes
SANDBOX_POOL = "(sandbox)"  # not a valid domain name, so never a real destination's pool


@dataclasses.dataclass(frozen=True)
class Attachments:
    """A claimed batch's attachment bytes by id, loaded once for all of its messages."""

    by_id: Mapping[int, bytes]
    unavailable: bool = False


NO_ATTACHMENTS = Attachments({})


@dataclasses.dataclass(frozen=True, slots=True)
class GiveBack:
    """The message goes back to the queue untried, due again at `due_at`."""

    due_at: datetime


class ResultWriter:
    """Writes outcomes in batches, a few milliseconds apart (penguinmails.buffer).

    A caller's `write` returns once its outcome is committed; until then its message
    keeps a slot. A failed batch goes back to the buffer and is retried.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500, interval: float = 0.005):
        self._pool = pool
        self._results: GroupCommit[queue.Result, bool] = GroupCommit(
            self._record,
            self._failed,
            max_batch=max_batch,
            interval=interval,
            first_backoff=0.1,
            name="outcome-batch",
        )

    async def write(self, result: queue.Result) -> bool:
        """True when written; False when the lease had passed to another worker."""
        return await asyncio.shield(self._results.submit(result))

    def close(self) -> None:
        self._results.close()

    async def run(self) -> None:
        await self._results.run()

    async def _record(self, results: list[queue.Result]) -> list[bool]:
        # Each write is conditional on the lease token, so a worker whose lease was taken
        # over cannot overwrite the newer outcome: its result is left out of `written`.
        written = await queue.record(self._pool, results)
        return [result.id in written for result in results]

    def _failed(self, exc: Exception, results: list[queue.Result]) -> Failure:
        if not isinstance(exc, DATABASE_ERRORS):
            raise exc  # a bug of ours: the worker stops rather than retrying it forever
        log.warning(
            "writing outcomes failed; will retry",
            extra={"action": "record_outcomes", "error": str(exc)},
        )
        return Failure.RETRY


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        database_url: str,
        owner: str | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._mta = settings.mta
        self._database_url = database_url
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._composer = Composer(pool, settings)
        self._router = Router(settings.mta)
        self._throttles = Throttles(settings.mta)
        self._slots = ConnectionSlots(pool, self.owner, settings.mta.lease_seconds)
        self.pools = Pools(settings.mta, self._slots)
        self._shaper = Shaper(load_rules(settings.mta.shaping_file))
        self._shared = SharedShaping(pool)
        self._egress = Egress(pool, settings.mta)
        self._sts = MtaSts(pool, settings.mta, self._router.resolver)
        self._relays = Relays(pool, settings)
        self._tenant_names: dict[int, str] = {}
        self._shapes: dict[tuple[Scope, str, bool], tuple[list[Level], Shape]] = {}
        self._shapes_version = -1
        self._refill_at = max(1, min(self._mta.batch_size, self._mta.max_in_flight // 2))
        self._writer = ResultWriter(pool, interval=settings.mta.outcome_flush_interval)
        self.metrics = MtaMetrics(settings.mta)
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._unwritten: set[int] = set()  # in flight, outcome not yet handed to the writer
        self._on_wire: set[int] = set()  # in an SMTP transaction right now
        self._wired: set[int] = set()  # went into an SMTP transaction during this attempt
        self._leases: dict[int, uuid.UUID] = {}
        self._kick = asyncio.Event()
        self._stopping = False

    def stop(self) -> None:
        """Stop claiming; in-flight messages finish (or are released) and run() returns."""
        self._stopping = True
        self._kick.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            side = [
                group.create_task(self._check_sources(), name="source-check"),
                group.create_task(self._breaker(), name="circuit-breaker"),
                group.create_task(self._shaping_view(), name="shaping-view"),
                group.create_task(self._listen(), name="queue-listener"),
                group.create_task(self._heartbeat(), name="lease-heartbeat"),
                group.create_task(self._presence(), name="presence"),
                group.create_task(self.pools.reap_idle(), name="idle-reaper"),
            ]
            writer = group.create_task(self._writer.run(), name="outcome-writer")
            try:
                await self._claim_loop()
            finally:
                await self._drain()
                self._writer.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), self._mta.shutdown_grace)
                writer.cancel()
                # The side tasks end first: the presence heartbeat, run after forget(),
                # would write this process's row back.
                for task in side:
                    task.cancel()
                await asyncio.gather(*side, return_exceptions=True)
                await self.pools.close()
                await self._sts.close()
                with contextlib.suppress(*DATABASE_ERRORS):
                    await self._slots.release_all()
                    await self._slots.forget()
        log.info("worker stopped", extra={"action": "worker_stopped", "owner": self.owner})

    async def _shaping_view(self) -> None:
        """Side task: what every process decided (suspensions, throttles, paused campaigns)
        read about once a second, even while every message here waits for a connection."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._shared.refresh()
            except DATABASE_ERRORS as exc:
                log.warning(
                    "shaping view not refreshed", extra={"action": "shaping", "error": str(exc)}
                )

    async def _breaker(self) -> None:
        """Side task: pause what sends badly: identities, campaigns, sending domains, tenants
        whose bounce or complaint rate passed its limit (every worker checks; the first to
        see one pauses it, once)."""
        breaker = self._mta.breaker
        if not breaker.enabled:
            return
        # Narrowest first, each in a statement of its own: a domain's and a tenant's rates
        # leave out what a pause of an identity or a campaign just stopped.
        broad = [s for s in breaker.scopes if s in ("domain", "tenant")]
        while True:
            await asyncio.sleep(breaker.check_interval)
            limits = (
                breaker.window_hours,
                breaker.min_sample,
                breaker.max_bounce_rate,
                breaker.max_complaint_rate,
            )
            tripped: list[tuple[str, object, str]] = []
            try:
                if "identity" in breaker.scopes:
                    rows = await self._pool.fetch(
                        SHAPING_SQL["sending_breaker"], ["identity"], *limits
                    )
                    tripped += [(r["scope"], r["key"], r["reason"]) for r in rows]
                if "campaign" in breaker.scopes:
                    rows = await self._pool.fetch(SHAPING_SQL["campaign_breaker"], *limits)
                    tripped += [("campaign", r["campaign_id"], r["reason"]) for r in rows]
                if broad:
                    rows = await self._pool.fetch(
                        SHAPING_SQL["sending_breaker"],
                        broad,
                        limits[0],
                        breaker.broad_min_sample,
                        *limits[2:],
                    )
                    tripped += [(r["scope"], r["key"], r["reason"]) for r in rows]
                await self._pool.execute(
                    SHAPING_SQL["advance_warmups"],
                    breaker.max_bounce_rate,
                    breaker.max_complaint_rate,
                )
            except DATABASE_ERRORS as exc:
                log.warning("breaker check failed", extra={"action": "breaker", "error": str(exc)})
                continue
            if tripped:
                with contextlib.suppress(*DATABASE_ERRORS):
                    await self._shared.refresh(force=True)  # hold them here at once
            for scope, key, reason in tripped:
                log.warning(
                    "sending paused by the circuit breaker",
                    extra={"action": "breaker", "scope": scope, "key": key, "reason": reason},
                )

    async def _check_sources(self) -> None:
        """Warn (once, at start) about egress sources whose EHLO name disagrees with their
        reverse DNS; delivery does not wait for it."""
        try:
            await check_sources(list(self._egress.sources.values()), self._router.resolver)
        except Exception:  # a check that cannot run must not stop the worker
            log.warning(
                "egress source check failed", exc_info=True, extra={"action": "source_check"}
            )

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._kick.clear()
            free = self._mta.max_in_flight - len(self._inflight)
            if free < self._refill_at:
                # Busy: claim again once a batch's worth has finished, not as each message
                # does. A claim costs Postgres about the same for 1 row as for 200, and
                # claiming on every finished message made it most of the database's work.
                await self._kick.wait()
                continue
            want = min(self._mta.batch_size, free)
            try:
                rows = await queue.claim(self._pool, want, self.owner, self._mta.lease_seconds)
            except DATABASE_ERRORS as exc:
                log.warning("claim failed", extra={"action": "claim", "error": str(exc)})
                rows = []
            contents = await self._attachment_contents(rows)
            self.metrics.claim_batch.observe(len(rows))
            for row in rows:
                self._start(row, contents)
            self.metrics.in_flight.set(len(self._inflight))
            if len(rows) < want and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self._mta.poll_interval)

    async def _attachment_contents(self, rows: list[asyncpg.Record]) -> Attachments:
        """The batch's attachment bytes, shared by its messages. Unreadable now: the messages
        that need them go back untried (like an unreadable DKIM key), the others go on."""
        try:
            return Attachments(await queue.attachment_contents(self._pool, rows))
        except DATABASE_ERRORS as exc:
            log.warning("attachments unreadable", extra={"action": "claim", "error": str(exc)})
            return Attachments({}, unavailable=True)

    def _start(self, row: asyncpg.Record, contents: Attachments | None = None) -> None:
        queue_id: int = row["id"]
        self._leases[queue_id] = row["lease_token"]
        self._unwritten.add(queue_id)
        task = asyncio.create_task(
            self._deliver(row, contents or NO_ATTACHMENTS), name=f"deliver-{queue_id}"
        )
        self._inflight[queue_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(queue_id, None)
            self._wired.discard(queue_id)
            self._leases.pop(queue_id, None)
            self._unwritten.discard(queue_id)
            self._kick.set()
            if not _.cancelled() and _.exception() is not None:
                log.error(
                    "delivery task crashed",
                    exc_info=_.exception(),
                    extra={"action": "deliver", "queue_id": queue_id},
                )

        task.add_done_callback(done)

    async def _deliver(self, row: asyncpg.Record, contents: Attachments) -> None:
        queue_id: int = row["id"]
        try:
            outcome = await self._attempt(row, contents)
        except DATABASE_ERRORS as exc:
            # The database went away mid-attempt (a connection slot, shaping state): the
            # message goes back, marked a possible duplicate if it reached a receiver.
            log.warning(
                "database unavailable during delivery; message released",
                extra={"action": "deliver", "queue_id": queue_id, "error": str(exc)},
            )
            outcome = GiveBack(datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS))
        if isinstance(outcome, GiveBack):
            await self._give_back(row, outcome.due_at, possible_duplicate=queue_id in self._wired)
            return
        # The event's payload calls the RFC 5322 Message-ID "message_id".
        data = {"recipient": row["recipient"], "message_id": row["message_id"], **outcome.data}
        outcome = dataclasses.replace(outcome, data=data)
        self._unwritten.discard(queue_id)
        written = await self._writer.write(queue.Result(queue_id, row["lease_token"], outcome))
        if written:
            domain = self.metrics.domain_label(row["recipient_domain"])
            self.metrics.outcomes.labels(outcome.status, domain).inc()
        else:
            log.warning(
                "lease lost before the outcome was written; newer outcome stands",
                extra={"action": "record_outcome", "queue_id": queue_id},
            )

    def _mark_wire(self, queue_id: int) -> None:
        self._on_wire.add(queue_id)
        self._wired.add(queue_id)

    async def _give_back(
        self, row: asyncpg.Record, due_at: datetime, *, possible_duplicate: bool = False
    ) -> None:
        """Release a leased message untried, retrying while the database is away (a restart
        takes seconds; the heartbeat keeps the lease meanwhile). Past RELEASE_PATIENCE, or
        on shutdown, it is left to its lease: once that expires another claim takes it."""
        delay = 0.5
        while True:
            try:
                await queue.release(
                    self._pool,
                    [(row["id"], row["lease_token"])],
                    due_at,
                    possible_duplicate=possible_duplicate,
                )
                return
            except DATABASE_ERRORS as exc:
                if self._stopping or delay > RELEASE_PATIENCE:
                    log.warning(
                        "message not released; its lease will expire",
                        extra={"action": "release", "queue_id": row["id"], "error": str(exc)},
                    )
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def _attempt(self, row: asyncpg.Record, contents: Attachments) -> Outcome | GiveBack:
        """Try one delivery: its outcome, or GiveBack when the message goes back untried."""
        queue_id: int = row["id"]
        if row["suppressed"]:
            return Outcome("suppressed", "email.suppressed", attempted=0)
        try:
            await self._shared.refresh()
        except DATABASE_ERRORS:
            pass  # last second's view stands
        if self._shared.stopped(row):
            # Paused after the claim (its campaign, identity, domain or tenant, by hand or by
            # the circuit breaker): back it goes (queue.release), not out.
            return GiveBack(datetime.now(UTC))
        domain: str = row["recipient_domain"]
        throttle = self._throttles[domain]
        until = throttle.backoff_until()
        if until is not None:
            return GiveBack(datetime.fromtimestamp(until, UTC))
        try:
            route = await self._router.route(domain, sandbox=row["sandbox"])
        except RouteError as exc:
            return self._decide(row, Reply(exc.code, str(exc)))
        try:
            if contents.unavailable and row["attachments"]:
                return GiveBack(datetime.now(UTC) + timedelta(seconds=KEY_RETRY_SECONDS))
            sender, data = await self._composer.render(row, contents.by_id)
        except ComposeError as exc:
            return Outcome(
                "failed",
                "email.failed",
                attempted=0,
                reply=Reply(None, f"5.6.0 cannot compose: {exc}"),
                data={"error": str(exc)},
            )
        except KeyUnavailable as exc:
            # The message is fine; its signing key cannot be read right now. Give it back
            # untried rather than sending it unsigned or failing it.
            log.warning(
                "DKIM key unavailable; message released",
                extra={"action": "dkim_unavailable", "queue_id": queue_id, "error": str(exc)},
            )
            return GiveBack(datetime.now(UTC) + timedelta(seconds=KEY_RETRY_SECONDS))
        except Exception as exc:
            # A bug of ours, or a row written around the API: defer with backoff (it bounces
            # at the maximum age) rather than crash and come back on every lease expiry.
            log.exception(
                "composing failed unexpectedly", extra={"action": "compose", "queue_id": queue_id}
            )
            return self._decide(row, Reply(None, f"4.3.0 internal error composing: {exc!r}"))
        relay = None
        if row["identity_id"] is not None and not row["sandbox"]:
            try:
                relay = await self._relays.route(row["identity_id"])
            except DATABASE_ERRORS:
                return GiveBack(datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS))
            except RelayUnavailable as exc:
                log.warning(
                    "identity relay password unreadable; message released",
                    extra={"action": "relay_unavailable", "queue_id": queue_id, "error": str(exc)},
                )
                return GiveBack(datetime.now(UTC) + timedelta(seconds=KEY_RETRY_SECONDS))
        if row["sandbox"]:
            # Test-mode messages share one pool toward the sink, apart from real domains',
            # and no receiver's shaping applies to them.
            await throttle.bucket.acquire()
            pool, scope, policy = self.pools[SANDBOX_POOL], None, None
        elif relay is not None:
            # The identity's own mailbox provider sends it on: its caps (the claim's) are
            # the pace, not the receiver's shaping, which the provider applies itself.
            route, scope, policy = relay, None, None
            pool = self.pools.shaped(Relays.shape(relay), self._mta.rule_for(domain))
        else:
            try:
                shaped = await self._shaped(row, domain, route)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "shaping state unavailable; message released",
                    extra={"action": "shaping", "queue_id": queue_id, "error": str(exc)},
                )
                return GiveBack(datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS))
            if isinstance(shaped, GiveBack):
                return shaped
            if isinstance(shaped, Reply):
                return self._decide(row, shaped)
            pool, route, scope, policy = shaped
        until = throttle.backoff_until()  # the domain may have pushed back while we waited
        if until is not None:
            return GiveBack(datetime.fromtimestamp(until, UTC))
        started = time.perf_counter()
        try:
            reply = await pool.send(
                route,
                sender,
                row["recipient"],
                data,
                on_wire=lambda: self._mark_wire(queue_id),
                wanted=lambda: self._wanted(row, scope),
            )
        except NotWanted:
            return GiveBack(datetime.now(UTC))  # paused or suspended while it waited
        except DomainBusy:
            # Other processes hold every connection it may have: let one of them have it.
            return GiveBack(datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS))
        finally:
            self._on_wire.discard(queue_id)
        self.metrics.smtp_seconds.observe(time.perf_counter() - started)
        if policy is not None:
            reply = dataclasses.replace(reply, tls={**(reply.tls or {}), "mta_sts": policy.mode})
        rule = self._shaper.reaction(reply, scope) if scope is not None else None
        if rule is None or scope is None:
            # No rule knows this reply: the domain's own back-off (a 421, a run of 4xx).
            throttle.note_reply(reply.code)
            return self._decide(row, reply, not_before=throttle.backoff_until())
        return await self._react(row, reply, rule, scope, throttle.backoff_until())

    async def _shaped(
        self, row: asyncpg.Record, domain: str, route: Route
    ) -> tuple[DomainPool, Route, Scope, Policy | None] | GiveBack | Reply:
        """Where a message goes under shaping: its pool (egress source, site, the caps of
        every level), having waited its turn at every rated level; or why not now."""
        scope = self._shaper.scope(domain, route)
        await self._shared.note_site(scope)
        await self._shared.refresh()
        held = self._held(row, scope)
        if held is not None:
            return GiveBack(held.until)
        policy = await self._sts.policy(domain) if route.names else None
        if policy is not None and policy.enforced:
            allowed = route.named(policy.matches)
            if not allowed.hosts:
                return Reply(
                    None,
                    f"4.7.5 MTA-STS policy enforced for {domain}, but none of its MX hosts "
                    f"({', '.join(sorted(set(route.names)))}) is in the policy "
                    f"({', '.join(policy.mx)})",
                )
            route = allowed
        source = await self._egress.choose(
            await self._pool_of(row), scope.provider_key or scope.site
        )
        if isinstance(source, datetime):
            return GiveBack(source)  # every source of its pool has sent its day's volume
        rule = self._mta.rule_for(domain)
        levels, shape = self._shape_for(scope, rule, source, policy is not None and policy.enforced)
        wait = await self._shared.reserve(levels)
        if wait > MAX_WAIT:
            return GiveBack(datetime.now(UTC) + timedelta(seconds=wait))
        if wait > 0:
            await asyncio.sleep(wait)
        return self.pools.shaped(shape, rule), route, scope, policy

    def _shape_for(
        self, scope: Scope, rule: ThrottleRule, source: Source, enforce: bool
    ) -> tuple[list[Level], Shape]:
        """The levels a message reserves its place at and the shape of the connections it
        goes out on. Every message to a site from one source has the same until the shared
        suspensions and throttles change, so they are worked out once per site and source
        in between, not per message."""
        if self._shapes_version != self._shared.version:
            self._shapes.clear()
            self._shapes_version = self._shared.version
        key = (scope, source.name, enforce)
        found = self._shapes.get(key)
        if found is not None:
            return found
        limits = self._shaper.limits(scope, rule)
        levels = [self._sourced(level, source) for level in limits.levels]
        capped = [lv for lv in levels if lv.max_connections is not None]
        shape = Shape(
            key=f"{source.name}|{scope.site}" + ("|mta-sts" if enforce else ""),
            max_connections=min(lv.max_connections or 1 for lv in capped),
            messages_per_connection=limits.messages_per_connection,
            slots=tuple((lv.key, lv.max_connections or 1) for lv in capped),
            source_address=source.address,
            ehlo=source.ehlo,
            tls_required=rule.tls_required,
            verify=enforce,
        )
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
        self._shapes[key] = found = (levels, shape)
        return found

    def _held(self, row: asyncpg.Record, scope: Scope) -> Suspension | None:
        """The shaping suspension holding this message now, if any: one on its site,
        provider, tenant or campaign (with none in force, the usual case, no keys to make)."""
        if not self._shared.suspending:
            return None
        return self._shared.holding(
            [
                scope_key(kind, scope, row["tenant_id"], row["campaign_id"])
                for kind in ("site", "provider", "tenant", "campaign")
            ]
        )

    def _wanted(self, row: asyncpg.Record, scope: Scope | None) -> bool:
        """Asked once a connection is ours, after any wait for it: still to go now? Not if
        its campaign, identity, domain or tenant was paused meanwhile, nor if a shaping rule
        suspended its site, provider, tenant or campaign meanwhile (it goes back, and the
        next claim holds it until the suspension ends)."""
        if self._shared.stopped(row):
            return False
        return scope is None or self._held(row, scope) is None

    def _sourced(self, level: Level, source: Source) -> Level:
        """A level as one egress source sees it: receivers count per sending address, so
        its slots and rate are the source's own; a throttle a rule set lowers them."""
        return Level(
            f"{source.name}/{level.key}",
            self._shared.max_connections(level.key, level.max_connections),
            self._shared.rate(level.key, level.rate_per_second),
            level.burst,
        )

    async def _pool_of(self, row: asyncpg.Record) -> str | None:
        """The egress pool a message leaves from: its campaign's, else its tenant's."""
        chosen = (row["settings"] or {}).get("egress_pool")
        if chosen or not self._mta.tenant_pools:
            return str(chosen) if chosen else None
        tenant_id: int = row["tenant_id"]
        name = self._tenant_names.get(tenant_id)
        if name is None:
            name = str(await self._pool.fetchval(SHAPING_SQL["tenant_name"], tenant_id))
            self._tenant_names[tenant_id] = name
        return self._mta.tenant_pools.get(name)

    async def _react(
        self,
        row: asyncpg.Record,
        reply: Reply,
        rule: Automation,
        scope: Scope,
        not_before: float | None,
    ) -> Outcome:
        """A receiver's reply fired a shaping rule: hold its scope for every process, and
        bounce the message where the rule says retrying is pointless."""
        key = scope_key(rule.scope, scope, row["tenant_id"], row["campaign_id"])
        detail = {"domain": scope.domain, "site": scope.site}
        try:
            held = await self._shared.fire(rule, key, row["id"], reply.message, detail)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not record a shaping rule; it holds in this process only",
                extra={"action": "shaping_fired", "rule": rule.name, "error": str(exc)},
            )
            held = None
        if rule.action == "bounce":
            bounced = Reply(
                reply.code if reply.code is not None and reply.code >= 500 else 550,
                f"5.0.0 bounced by shaping rule {rule.name}: {reply.message}",
                tls=reply.tls,
            )
            outcome = self._decide(row, bounced)
            # The address is not at fault (a full mailbox, a blocked sender): no suppression.
            return dataclasses.replace(
                outcome,
                suppress=False,
                data={**outcome.data, "bounce_type": "rule", "shaping_rule": rule.name},
            )
        outcome = self._decide(row, reply, not_before=not_before)
        if held is not None and held.action == "suspend" and outcome.status == "deferred":
            # Due again when its scope is, not after the usual back-off on top.
            outcome = dataclasses.replace(
                outcome,
                next_attempt_at=held.until,
                data={
                    **outcome.data,
                    "next_attempt_at": held.until.isoformat(),
                    "shaping_rule": rule.name,
                },
            )
        return outcome

    def _decide(
        self, row: asyncpg.Record, reply: Reply, not_before: float | None = None
    ) -> Outcome:
        return decide(
            reply,
            attempts=row["attempts"] + 1,
            created_at=row["created_at"],
            now=datetime.now(UTC),
            settings=self._mta,
            not_before=not_before,
        )

    async def _drain(self) -> None:
        """Wait a bounded time for in-flight messages, then cancel and release the rest."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=self._mta.shutdown_grace)
        leftover = [(i, self._leases[i]) for i in self._unwritten if i in self._leases]
        untried = [lease for lease in leftover if lease[0] not in self._on_wire]
        interrupted = [lease for lease in leftover if lease[0] in self._on_wire]
        for task in list(self._inflight.values()):
            task.cancel()
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()))
        now = datetime.now(UTC)
        try:
            await queue.release(self._pool, untried, now)
            await queue.release(self._pool, interrupted, now, possible_duplicate=True)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not release leases; they will expire",
                extra={"action": "release", "error": str(exc)},
            )

    async def _heartbeat(self) -> None:
        interval = self._mta.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await queue.extend_leases(self._pool, self.owner, self._mta.lease_seconds)
                await self._slots.extend()
            except DATABASE_ERRORS as exc:
                log.warning(
                    "lease heartbeat failed", extra={"action": "heartbeat", "error": str(exc)}
                )

    async def _presence(self) -> None:
        """Count the live MTA processes, so each takes its share of every domain's cap."""
        while True:
            try:
                self.pools.processes = await self._slots.seen(PRESENCE_SECONDS * 3)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "presence heartbeat failed", extra={"action": "presence", "error": str(exc)}
                )
            await asyncio.sleep(PRESENCE_SECONDS)

    async def _listen(self) -> None:
        """LISTEN on the queue channel; reconnect when the connection drops (polling covers)."""
        if transaction_pooled(self._settings):
            # A LISTEN through a transaction pooler registers on whichever server session
            # ran it, which then serves other clients: notifications would go astray.
            log.info(
                "behind a transaction pooler: not listening for new mail, polling the queue "
                "every %ss",
                self._mta.poll_interval,
                extra={"action": "listen", "poll_interval": self._mta.poll_interval},
            )
            return
        while True:
            try:
                conn = await asyncpg.connect(self._database_url)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "queue listener cannot connect", extra={"action": "listen", "error": str(exc)}
                )
                await asyncio.sleep(self._mta.poll_interval * 5)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await conn.add_listener(queue.CHANNEL, lambda *_: self._kick.set())
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
