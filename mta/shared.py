"""Shaping state held in Postgres, so every MTA process and host obeys one set of limits.

- Rates: a budget per shaping key (`shaping_rates`). A process reserves tokens for every
  rated level in one short statement, about 50 ms of the rate at a time, and hands them to
  its messages; the budget may go below zero, which makes a reservation a place in line: its
  holder waits -tokens / rate seconds. Two processes therefore share a
  provider's 50 messages a second instead of taking 50 each. A wait longer than `MAX_WAIT`
  is refunded and the message given back to the queue for that long, so a worker never
  sits on a lease for minutes.
- Suspensions and throttles (`shaping_suspensions`): what automation rules decided, per
  site, provider, tenant or campaign, until a time. Each process reads the ones in force
  at most once per `REFRESH_SECONDS` (a handful of rows), so the claim path pays nothing.
- Connection caps at each level use the connection slots (mta/slots.py) under the level's key.
- Which site and provider each domain was last seen in (`domain_sites`), written only when
  it changes, for `penguinmails status` and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from mta.coalesce import Coalesced
from mta.shaping import Automation, Level, Scope
from penguinmails.queries import load

SQL = load("mta", "shaping.sql")
log = logging.getLogger(__name__)

MAX_WAIT = 10.0  # seconds a delivery may wait for its rate before giving the message back
REFRESH_SECONDS = 1.0
CHUNK_SECONDS = 0.05  # a process reserves about this long's worth of a rate at once
STASH_SECONDS = 0.25  # reserved tokens not used this long after they are due are dropped


@dataclass
class _Stash:
    """Tokens of one level this process reserved and has not handed out yet."""

    tokens: int
    ready_at: float  # monotonic time from which they may be used
    expires_at: float


@dataclass(frozen=True)
class Suspension:
    key: str
    action: str  # suspend | throttle
    until: datetime
    rule: str
    reply: str
    max_connections: int | None = None
    rate_per_second: float | None = None


class SharedShaping:
    def __init__(self, pool: asyncpg.Pool, clock: Any = time) -> None:
        self._pool = pool
        self._clock = clock
        self._active: dict[str, Suspension] = {}
        # Bumped whenever the suspensions and throttles may have changed: what was worked
        # out from them (a worker's shapes) is worked out again.
        self.version = 0
        self._refreshed = float("-inf")
        self._sites: dict[str, tuple[str, str | None]] = {}
        self._stash: dict[str, _Stash] = {}
        self.paused_campaigns: frozenset[int] = frozenset()
        self.paused_identities: frozenset[int] = frozenset()
        self.holds: frozenset[tuple[int, str]] = frozenset()  # (tenant, domain or "")
        self._reserving = asyncio.Lock()
        # The read under way, which every delivery asking for a refresh meanwhile awaits
        # rather than starting its own (a claim's worth of them would, each second).
        self._reads: Coalesced[None, None] = Coalesced()

    # -- rates ----------------------------------------------------------------------------

    async def reserve(self, levels: Iterable[Level]) -> float:
        """Reserve one message at every rated level; the seconds to wait before sending
        (0: now). More than MAX_WAIT: nothing is kept reserved, and the caller gives the
        message back for that long.

        A process reserves about CHUNK_SECONDS of a level's rate at once, in one round trip
        for every level, and hands the tokens out itself: at a high rate that is one
        statement for many messages, at a low one (under 20 a second) one per message as
        before. Tokens it has not used within STASH_SECONDS are dropped, never spent late
        in a burst the rate did not allow."""
        levels = list(levels)
        wait = self._from_stash(levels)
        if wait is not None:
            return wait
        # One reservation statement at a time in this process: the deliveries that find the
        # stash empty together wait for one chunk instead of each taking their own.
        async with self._reserving:
            wait = self._from_stash(levels)
            if wait is not None:
                return wait
            return await self._reserve(levels)

    def _from_stash(self, levels: list[Level]) -> float | None:
        """The wait when every rated level has a stashed token (taking one of each), else
        None (taking nothing)."""
        now = self._clock.monotonic()
        stashes = []
        for level in levels:
            if self.rate(level.key, level.rate_per_second) is None:
                continue
            stash = self._stash.get(level.key)
            if stash is None or stash.tokens <= 0 or stash.expires_at <= now:
                return None
            stashes.append(stash)
        wait = 0.0
        for stash in stashes:
            stash.tokens -= 1
            wait = max(wait, stash.ready_at - now)
        return wait

    async def _reserve(self, levels: list[Level]) -> float:
        now = self._clock.monotonic()
        wait = 0.0
        wanted: list[tuple[str, float, float, int]] = []
        for level in levels:
            rate = self.rate(level.key, level.rate_per_second)
            if rate is None:
                continue
            stash = self._stash.get(level.key)
            if stash is not None and stash.tokens > 0 and stash.expires_at > now:
                stash.tokens -= 1
                wait = max(wait, stash.ready_at - now)
                continue
            chunk = max(1, min(int(rate * CHUNK_SECONDS), level.burst))
            wanted.append((level.key, rate, float(level.burst), chunk))
        if not wanted:
            return wait
        tokens = await self._take(wanted)
        fresh = {}
        for key, rate, _burst, chunk in wanted:
            ready = max(0.0, -tokens[key]) / rate
            fresh[key] = _Stash(chunk - 1, now + ready, now + ready + STASH_SECONDS)
            wait = max(wait, ready)
        if wait > MAX_WAIT:
            for key, _rate, _burst, chunk in wanted:
                await self._pool.execute(SQL["refund_tokens"], key, float(chunk))
            return wait
        self._stash.update(fresh)
        return wait

    async def _take(self, wanted: list[tuple[str, float, float, int]]) -> dict[str, float]:
        tokens: dict[str, float] = {}
        for _ in range(3):  # a key another process inserted at the same moment: ask again
            missing = [w for w in wanted if w[0] not in tokens]
            if not missing:
                break
            rows = await self._pool.fetch(
                SQL["reserve_tokens_many"],
                [w[0] for w in missing],
                [w[1] for w in missing],
                [w[2] for w in missing],
                [float(w[3]) for w in missing],
            )
            tokens.update((r["key"], r["tokens"]) for r in rows)
        return {key: tokens.get(key, 0.0) for key, *_ in wanted}

    def rate(self, key: str, rate: float | None) -> float | None:
        """A level's rate, lowered by a throttle in force on it (as max_connections does
        for its cap)."""
        held = self._active.get(key)
        if held is None:
            return rate or None
        rates = [r for r in (rate, held.rate_per_second) if r]
        return min(rates) if rates else None

    # -- suspensions ----------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Read the suspensions and pauses again if the view is a second old (`force`: now,
        for a change this process just made). A read already under way is shared: its
        result, or its failure, is every waiting caller's."""
        if force:
            await self._read()
            return
        if self._clock.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        await self._reads.run(None, self._read)

    async def _read(self) -> None:
        now = self._clock.monotonic()
        rows = await self._pool.fetch(SQL["active_suspensions"])
        self._active = {r["key"]: Suspension(**dict(r)) for r in rows}
        self.version += 1
        paused = await self._pool.fetch(SQL["paused_campaigns"])
        self.paused_campaigns = frozenset(r["id"] for r in paused if r["kind"] == "campaign")
        self.paused_identities = frozenset(r["id"] for r in paused if r["kind"] == "identity")
        self.holds = frozenset((r["tenant_id"], r["domain"]) for r in paused if r["kind"] == "hold")
        self._refreshed = now

    def stopped(self, row: Mapping[str, Any]) -> bool:
        """Whether a claimed message's campaign, identity, sending domain or tenant is paused
        (as last read): it goes back rather than out."""
        if row["campaign_id"] is not None and row["campaign_id"] in self.paused_campaigns:
            return True
        if row["identity_id"] is not None and row["identity_id"] in self.paused_identities:
            return True
        if self.holds:
            tenant = row["tenant_id"]
            domain = str(row["from_email"]).rpartition("@")[2].lower()
            return (tenant, "") in self.holds or (tenant, domain) in self.holds
        return False

    @property
    def suspending(self) -> bool:
        """Whether any suspension or throttle is in force (as last read): almost never, so
        the per-message checks start here."""
        return bool(self._active)

    def holding(self, keys: Sequence[str]) -> Suspension | None:
        """The suspension (not a throttle) in force on any of `keys`, latest ending first."""
        held = [s for k in keys if (s := self._active.get(k)) is not None and s.action == "suspend"]
        return max(held, key=lambda s: s.until) if held else None

    def max_connections(self, key: str, cap: int | None) -> int | None:
        """A level's connection cap, lowered by a throttle in force on it."""
        held = self._active.get(key)
        if held is None or held.max_connections is None:
            return cap
        return held.max_connections if cap is None else min(cap, held.max_connections)

    async def fire(
        self,
        rule: Automation,
        key: str,
        message_id: int,
        reply_text: str,
        detail: Mapping[str, Any],
    ) -> Suspension:
        """Record what `rule` decided for scope `key`; announces `delivery.throttled` (for
        message `message_id`'s tenant) once per episode."""
        action = "throttle" if rule.action == "throttle" else "suspend"
        row = await self._pool.fetchrow(
            SQL["suspend"],
            key,
            action,
            rule.duration,
            rule.name,
            reply_text[:500],
            rule.max_connections if action == "throttle" else None,
            rule.rate_per_second if action == "throttle" else None,
            message_id,
            dict(detail),
        )
        held = Suspension(
            key,
            action,
            row["until"],
            rule.name,
            reply_text[:500],
            rule.max_connections if action == "throttle" else None,
            rule.rate_per_second if action == "throttle" else None,
        )
        self._active[key] = held  # this process obeys at once, the others within a second
        self.version += 1
        if row["announced"]:
            log.warning(
                "shaping rule fired",
                extra={
                    "action": "shaping_fired",
                    "rule": rule.name,
                    "scope": key,
                    "until": row["until"].isoformat(),
                    "reply": reply_text[:200],
                },
            )
        return held

    # -- sites ----------------------------------------------------------------------------

    async def note_site(self, scope: Scope) -> None:
        seen = (scope.site, scope.provider)
        if self._sites.get(scope.domain) == seen:
            return
        # Noted before the write: the deliveries to the domain behind this one need not
        # write it again (at start, a whole claim's worth of them would).
        self._sites[scope.domain] = seen
        try:
            await self._pool.execute(SQL["note_domain_site"], scope.domain, *seen)
        except BaseException:
            if self._sites.get(scope.domain) == seen:
                del self._sites[scope.domain]  # the next delivery tries again
            raise


def scope_key(kind: str, scope: Scope, tenant_id: int, campaign_id: int | None) -> str:
    """The shared key an automation rule's scope names for this delivery. A provider scope
    for a site of no provider holds the site; a campaign scope for a message of no campaign
    holds its tenant."""
    if kind == "site":
        return scope.site
    if kind == "provider":
        return scope.provider_key or scope.site
    if kind == "campaign" and campaign_id is not None:
        return f"campaign:{campaign_id}"
    return f"tenant:{tenant_id}"
