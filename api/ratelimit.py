"""Per-tenant request limits by plan tier, shared by every API process through Postgres.

A fixed window (an hour by default) per tenant is one row; each authenticated request is one
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, so several API processes on one database
count together and a restart forgets nothing. A fixed window lets a client spend up to twice
its limit across a window boundary; that is the accepted price of one row and one statement.

Every authenticated response carries X-RateLimit-Limit / -Remaining / -Reset (epoch seconds
when the window ends); past the limit the answer is 429 RATE_LIMITED with Retry-After.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from api.envelope import ApiError
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

    def limit_for(self, tier: str) -> int:
        return self.limits.get(tier, self.limits.get("free", TIER_LIMITS["free"]))

    async def hit(self, tenant_id: int, tier: str, now: float | None = None) -> Usage:
        now = time.time() if now is None else now
        start = int(now // self.window * self.window)
        count: int = await self.pool.fetchval(
            SQL["count_request"], tenant_id, datetime.fromtimestamp(start, UTC)
        )
        limit = self.limit_for(tier)
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


def rate_limited(usage: Usage) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMITED",
        f"Rate limit of {usage.limit} requests per window exceeded; "
        f"retry after {usage.retry_after()} seconds",
        headers={"Retry-After": str(usage.retry_after())},
    )
