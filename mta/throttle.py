"""Per-destination-domain message rate and back-off (connection caps live in smtp.py).

Receivers judge a sender by how it behaves under their limits. Each destination domain gets
a token bucket for messages and a back-off window that opens when the domain answers 421 or
a run of 4xx replies, so we wait instead of hammering.
"""

from __future__ import annotations

import asyncio
import time

from penguinmails.config import MtaSettings, ThrottleRule


class Clock:
    """Time as the throttles read it: the process's own, or one a test moves by hand."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; rate 0 means unlimited."""

    def __init__(self, rate: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self._lock:  # first come, first served: waiters queue on the lock
            self._refill()
            while self._tokens < 1:
                await self._clock.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


class DomainThrottle:
    def __init__(self, domain: str, rule: ThrottleRule, clock: Clock = SYSTEM_CLOCK) -> None:
        self.domain = domain
        self.rule = rule
        self.bucket = TokenBucket(rule.rate_per_second, rule.burst, clock)
        self._clock = clock
        self._consecutive_4xx = 0
        self._backoff_until = 0.0  # wall-clock seconds, as clock.time()

    def backoff_until(self) -> float | None:
        """Wall-clock time until which this domain must not be tried, or None."""
        return self._backoff_until if self._backoff_until > self._clock.time() else None

    def note_reply(self, code: int | None) -> None:
        """Feed every SMTP outcome in; None stands for a connection failure or timeout."""
        if code is not None and 200 <= code < 300:
            self._consecutive_4xx = 0
            return
        if code is not None and not 400 <= code < 500:
            # A 5xx about one recipient says nothing about the rate; anything else (a 3xx
            # or 1xx surfacing as a final code) is no "slow down" either.
            return
        self._consecutive_4xx += 1
        if code == 421 or self._consecutive_4xx >= self.rule.backoff_after_4xx:
            self._backoff_until = self._clock.time() + self.rule.backoff_seconds
            self._consecutive_4xx = 0


class Throttles:
    """One DomainThrottle per destination domain, created on first use."""

    def __init__(self, settings: MtaSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock
        self._domains: dict[str, DomainThrottle] = {}

    def __getitem__(self, domain: str) -> DomainThrottle:
        throttle = self._domains.get(domain)
        if throttle is None:
            throttle = DomainThrottle(domain, self._settings.rule_for(domain), self._clock)
            self._domains[domain] = throttle
        return throttle
