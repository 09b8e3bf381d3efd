"""Per-tenant request limits by plan tier, shared by every API process through Postgres.

A request is counted only once it is authenticated and allowed (a refused write costs the
tenant nothing), against the budget of its tenant row (so test mode, whose row is the
account's test twin, counts apart from live, with TEST_MODE_FACTOR times the tier's limit:
"relaxed for testing") and of its bucket (publishable keys apart from secret keys and login
tokens, so a public browser key cannot lock the tenant out).

A fixed window (an hour by default) per tenant, mode and bucket is one row; each counted
request is one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, so several API processes on
one database count together and a restart forgets nothing. A fixed window lets a client spend
up to twice its limit across a window boundary; that is the accepted price of one row and one
statement.

Every authenticated response carries X-RateLimit-Limit / -Remaining / -Reset (epoch seconds
when the window ends); past the limit the answer is 429 RATE_LIMITED with Retry-After.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from api.errors import ApiError
from penguinmails.queries import load

SQL = load("api")

# Requests per hour, by tenant tier (the product documentation's numbers).
TIER_LIMITS: Mapping[str, int] = {
    "free": 1_000,
    "starter": 10_000,
    "professional": 100_000,
    "enterprise": 1_000_000,
}
WINDOW_SECONDS = 3600
TEST_MODE_FACTOR = 10


@dataclass(frozen=True)
class Usage:
    limit: int
    remaining: int
    reset: int  # epoch seconds when the window ends
    exceeded: bool

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def retry_after(self, now: float | None = None) -> int:
        return max(1, math.ceil(self.reset - (time.time() if now is None else now)))


class RateLimiter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        limits: Mapping[str, int] | None = None,
        window: int = WINDOW_SECONDS,
    ) -> None:
        self.pool = pool
        self.limits = dict(TIER_LIMITS if limits is None else limits)
        self.window = window
        self.logins = LoginThrottle(pool)

    def limit_for(self, tier: str, *, test: bool = False) -> int:
        limit = self.limits.get(tier, self.limits.get("free", TIER_LIMITS["free"]))
        return limit * TEST_MODE_FACTOR if test else limit

    async def hit(
        self,
        tenant_id: int,
        tier: str,
        now: float | None = None,
        *,
        bucket: str = "secret",
        test: bool = False,
    ) -> Usage:
        now = time.time() if now is None else now
        start = int(now // self.window * self.window)
        count: int = await self.pool.fetchval(
            SQL["count_request"], tenant_id, datetime.fromtimestamp(start, UTC), bucket
        )
        limit = self.limit_for(tier, test=test)
        return Usage(
            limit=limit,
            remaining=max(0, limit - count),
            reset=start + self.window,
            exceeded=count > limit,
        )

    async def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        start = int(now // self.window * self.window)
        await self.pool.execute(SQL["prune_rate_limits"], datetime.fromtimestamp(start, UTC))
        await self.pool.execute(
            SQL["prune_login_failures"], datetime.fromtimestamp(now - LOGIN_WINDOW_SECONDS, UTC)
        )


# Failed logins: per account address and per source network (a /24 or /64), in fixed windows.
LOGIN_WINDOW_SECONDS = 900
LOGIN_ACCOUNT_FAILURES = 10
LOGIN_NETWORK_FAILURES = 100


def rate_limited(usage: Usage) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMITED",
        f"Rate limit of {usage.limit} requests per window exceeded; "
        f"retry after {usage.retry_after()} seconds",
        headers={"Retry-After": str(usage.retry_after())},
    )


def source_network(remote: str | None) -> str:
    """The network a login comes from: its /24 (IPv4) or /64 (IPv6), where one party usually
    holds every address, so rotating addresses within it buys no more tries."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return "unknown"
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class LoginThrottle:
    """Failed logins counted per account address and per source network in Postgres (so every
    API process shares the count); past either limit a login is refused with 429 and
    Retry-After before any password is hashed."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        window: int = LOGIN_WINDOW_SECONDS,
        account_limit: int = LOGIN_ACCOUNT_FAILURES,
        network_limit: int = LOGIN_NETWORK_FAILURES,
    ) -> None:
        self.pool = pool
        self.window = window
        self.account_limit = account_limit
        self.network_limit = network_limit

    def _start(self, now: float | None) -> tuple[datetime, int]:
        now = time.time() if now is None else now
        start = int(now // self.window * self.window)
        return datetime.fromtimestamp(start, UTC), start + self.window

    @staticmethod
    def scopes(email: str, network: str) -> list[str]:
        return [f"account:{email.lower()}", f"network:{network}"]

    async def check(self, email: str, network: str, now: float | None = None) -> None:
        start, reset = self._start(now)
        rows = await self.pool.fetch(SQL["login_failures"], self.scopes(email, network), start)
        counts = {r["scope"].partition(":")[0]: r["failures"] for r in rows}
        if (
            counts.get("account", 0) >= self.account_limit
            or counts.get("network", 0) >= self.network_limit
        ):
            retry = max(1, math.ceil(reset - (time.time() if now is None else now)))
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"Too many failed logins; retry after {retry} seconds",
                headers={"Retry-After": str(retry)},
            )

    async def failed(self, email: str, network: str, now: float | None = None) -> None:
        start, _ = self._start(now)
        await self.pool.execute(SQL["count_login_failure"], self.scopes(email, network), start)

    async def succeeded(self, email: str) -> None:
        await self.pool.execute(SQL["clear_login_failures"], f"account:{email.lower()}")
