"""Shaping state held in Postgres, so every MTA process and host obeys one set of limits.

- Rates: a budget per shaping key (`shaping_rates`). Each message at a rated level reserves
  one token in one short statement; the budget may go below zero, which makes a reservation
  a place in line: its holder waits -tokens / rate seconds. Two processes therefore share a
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

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from mta.shaping import Automation, Level, Scope
from penguinmails.queries import load

SQL = load("mta", "shaping.sql")
log = logging.getLogger(__name__)

MAX_WAIT = 10.0  # seconds a delivery may wait for its rate before giving the message back
REFRESH_SECONDS = 1.0


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
        self._refreshed = float("-inf")
        self._sites: dict[str, tuple[str, str | None]] = {}

    # -- rates ----------------------------------------------------------------------------

    async def reserve(self, levels: Iterable[Level]) -> float:
        """Reserve one message at every rated level; the seconds to wait before sending
        (0: now). More than MAX_WAIT: nothing is kept reserved, and the caller gives the
        message back for that long."""
        taken: list[tuple[str, float]] = []
        wait = 0.0
        for level in levels:
            rate = self._rate(level)
            if rate is None:
                continue
            tokens: float = await self._pool.fetchval(
                SQL["reserve_tokens"], level.key, rate, float(level.burst), 1.0
            )
            taken.append((level.key, 1.0))
            if tokens < 0:
                wait = max(wait, -tokens / rate)
        if wait > MAX_WAIT:
            for key, amount in taken:
                await self._pool.execute(SQL["refund_tokens"], key, amount)
        return wait

    def _rate(self, level: Level) -> float | None:
        """The level's rate, lowered by a throttle in force on it."""
        held = self._active.get(level.key)
        rates = [r for r in (level.rate_per_second, held and held.rate_per_second) if r]
        return min(rates) if rates else None

    # -- suspensions ----------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        now = self._clock.monotonic()
        if not force and now - self._refreshed < REFRESH_SECONDS:
            return
        rows = await self._pool.fetch(SQL["active_suspensions"])
        self._active = {r["key"]: Suspension(**dict(r)) for r in rows}
        self._refreshed = now

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

    @property
    def active(self) -> Mapping[str, Suspension]:
        return self._active

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
        await self._pool.execute(SQL["note_domain_site"], scope.domain, *seen)
        self._sites[scope.domain] = seen


def scope_key(kind: str, scope: Scope, tenant_id: int, campaign_id: int | None) -> str:
    """The shared key an automation rule's scope names for this delivery. A provider scope
    for a site of no provider holds the site; a campaign scope for a message of no campaign
    holds its tenant."""
    if kind == "site":
        return scope.site
    if kind == "provider":
        return f"provider:{scope.provider}" if scope.provider else scope.site
    if kind == "campaign" and campaign_id is not None:
        return f"campaign:{campaign_id}"
    return f"tenant:{tenant_id}"
