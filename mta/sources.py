"""Egress sources and pools: which local address a delivery leaves from, and its EHLO name.

Receivers keep reputation per sending IP, so an operator with several addresses names each
as a source (`[mta.sources.NAME] address, ehlo`) and groups them in weighted pools
(`[mta.pools.NAME] sources = {a = 2, b = 1}`). A message goes out through its pool (its
campaign's or tenant's, else `[mta] default_pool`, else every source); each delivery picks a
source by weight, and throttles hold per (source, site) as receivers count them: the shaping
keys carry the source's name.

A new address must be warmed up: `[mta.sources.NAME.warmup]` gives its daily volume per
provider (or per site of no provider) for each day from `start`. The day's count is kept in
Postgres (`source_volume`), taken atomically only while under the cap, so every process
shares one count. A source past its day's volume is skipped: the delivery spills to the
pool's other sources, and when every one of them is capped the message waits for the next
UTC day. Warm sources are not counted at all.

At start, `check_sources` compares each source's EHLO name with its reverse and forward DNS
(FCrDNS) and logs a clear warning when they disagree: receivers such as Gmail and Microsoft
penalise or refuse mail from an address whose PTR does not name the host that greets them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

from penguinmails.config import MtaSettings, WarmupSettings
from penguinmails.queries import load

SQL = load("mta", "shaping.sql")
log = logging.getLogger(__name__)

DEFAULT = "default"


@dataclass(frozen=True)
class Source:
    name: str
    address: str  # "" : the system's choice
    ehlo: str
    warmup: WarmupSettings | None = None

    def cap(self, day: date) -> int | None:
        """The day's volume per provider while warming up; None once warm."""
        if self.warmup is None:
            return None
        index = (day - self.warmup.start).days
        if index < 0:
            return self.warmup.daily[0]
        if index >= len(self.warmup.daily):
            return None
        return self.warmup.daily[index]


class Egress:
    def __init__(
        self,
        pool: asyncpg.Pool | None,
        settings: MtaSettings,
        *,
        rng: random.Random | None = None,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self._pool = pool
        self._rng = rng or random.Random()
        self._today = today
        self.sources: dict[str, Source] = {
            name: Source(name, s.address, s.ehlo or settings.hostname, s.warmup)
            for name, s in settings.sources.items()
        } or {DEFAULT: Source(DEFAULT, "", settings.hostname)}
        every = {name: 1.0 for name in self.sources}
        self._pools: dict[str, dict[str, float]] = {
            name: dict(p.sources) for name, p in settings.pools.items()
        }
        self._default = self._pools.get(settings.default_pool, every)

    def members(self, pool: str | None) -> dict[str, float]:
        """The sources of `pool` with their weights (an unknown or empty name: the default)."""
        return self._pools.get(pool or "", self._default)

    async def choose(self, pool: str | None, bucket: str) -> Source | datetime:
        """A source of `pool` for one delivery toward `bucket` (the provider's or site's
        shaping key), counted against its warm-up; or, when every source of the pool is past
        its day's volume there, the time the next day starts."""
        candidates = dict(self.members(pool))
        today = self._today()
        while candidates:
            if len(candidates) == 1:  # the usual case: no need to draw
                [name] = candidates
            else:
                names = list(candidates)
                name = self._rng.choices(names, weights=[candidates[n] for n in names])[0]
            source = self.sources[name]
            cap = source.cap(today)
            if cap is None or await self._count(source, bucket, today, cap):
                return source
            del candidates[name]  # spill to the others
        return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)

    async def _count(self, source: Source, bucket: str, day: date, cap: int) -> bool:
        """Count one delivery on the source's day if it is under `cap`."""
        if self._pool is None:
            return True
        taken = await self._pool.fetchval(SQL["count_source_volume"], source.name, bucket, day, cap)
        return taken is not None


async def check_sources(
    sources: Sequence[Source], resolver: dns.asyncresolver.Resolver
) -> list[str]:
    """A warning for each source whose EHLO name is not its address's reverse DNS name, or
    does not resolve back to the address (forward-confirmed reverse DNS)."""
    warnings: list[str] = []
    for source in sources:
        if not source.address:
            continue  # the system picks the address: nothing to compare here
        try:
            answer = await resolver.resolve(dns.reversename.from_address(source.address), "PTR")
            names = {r.target.to_text(omit_final_dot=True).lower() for r in answer}
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            names = set()
        except (dns.exception.DNSException, ValueError) as exc:
            warnings.append(f"source {source.name}: reverse DNS of {source.address} failed: {exc}")
            continue
        ehlo = source.ehlo.lower().rstrip(".")
        if ehlo not in names:
            found = ", ".join(sorted(names)) or "no PTR record"
            warnings.append(
                f"source {source.name}: {source.address} reverse DNS is {found}, "
                f"but it greets as {ehlo}"
            )
            continue
        try:
            forward: set[str] = set()
            for rdtype in ("A", "AAAA"):
                try:
                    forward |= {r.to_text() for r in await resolver.resolve(ehlo, rdtype)}
                except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                    pass
        except dns.exception.DNSException as exc:
            warnings.append(f"source {source.name}: forward DNS of {ehlo} failed: {exc}")
            continue
        if source.address not in forward:
            warnings.append(
                f"source {source.name}: {ehlo} resolves to "
                f"{', '.join(sorted(forward)) or 'nothing'}, not {source.address}"
            )
    for warning in warnings:
        log.warning(warning, extra={"action": "source_check"})
    return warnings
