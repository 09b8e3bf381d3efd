"""Tier limits shared by several API processes through Postgres."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from api.ratelimit import TIER_LIMITS, WINDOW_SECONDS, RateLimiter
from api.server import ApiServer
from tests.helpers import ROOT, Client, assert_error


async def test_two_processes_share_one_limit(
    start_api: Callable[..., Awaitable[ApiServer]], http: Any, live_key: str
) -> None:
    key = live_key
    limits = {"free": 6}
    one, two = await start_api(limits=limits), await start_api(limits=limits)
    a = Client(http, one.url + "/api/v1", key)
    b = Client(http, two.url + "/api/v1", key)
    remaining = []
    for client in (a, b, a, b, a, b):
        reply = await client.get("/campaigns")
        assert reply.status == 200
        assert reply.headers["X-RateLimit-Limit"] == "6"
        remaining.append(int(reply.headers["X-RateLimit-Remaining"]))
    assert remaining == [5, 4, 3, 2, 1, 0]
    for client in (a, b):
        reply = await client.get("/campaigns")
        error = assert_error(reply, 429, "RATE_LIMITED")
        assert "6" in error["message"]
        retry = int(reply.headers["Retry-After"])
        assert 1 <= retry <= 3600
        assert reply.headers["X-RateLimit-Remaining"] == "0"
        assert abs(int(reply.headers["X-RateLimit-Reset"]) - (time.time() + retry)) <= 2


async def test_concurrent_requests_are_counted_exactly(
    start_api: Callable[..., Awaitable[ApiServer]], http: Any, live_key: str
) -> None:
    key = live_key
    servers = [await start_api(limits={"free": 10}) for _ in range(2)]
    clients = [Client(http, s.url + "/api/v1", key) for s in servers]
    replies = await asyncio.gather(*(clients[i % 2].get("/contacts") for i in range(30)))
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) == 10 and statuses.count(429) == 20


async def test_limits_are_per_tenant_and_per_tier(
    start_api: Callable[..., Awaitable[ApiServer]],
    http: Any,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    server = await start_api(limits={"free": 1, "starter": 3})
    free = Client(http, server.url + "/api/v1", await make_key("small"))
    paid = Client(http, server.url + "/api/v1", await make_key("paid", tier="starter"))
    assert (await free.get("/contacts")).status == 200
    assert (await free.get("/contacts")).status == 429
    for _ in range(3):
        reply = await paid.get("/contacts")
        assert reply.status == 200 and reply.headers["X-RateLimit-Limit"] == "3"
    assert (await paid.get("/contacts")).status == 429


async def test_window_rolls_over_and_old_windows_are_pruned(pool: asyncpg.Pool) -> None:
    tenant = await pool.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    limiter = RateLimiter(pool, {"free": 2}, window=60)
    start = 1_800_000_000.0  # a window boundary
    assert not (await limiter.hit(tenant, "free", now=start)).exceeded
    assert not (await limiter.hit(tenant, "free", now=start + 1)).exceeded
    usage = await limiter.hit(tenant, "free", now=start + 2)
    assert usage.exceeded and usage.reset == int(start) + 60
    assert usage.retry_after(now=start + 2) == 58
    assert not (await limiter.hit(tenant, "free", now=start + 60)).exceeded
    await limiter.prune(now=start + 60)
    assert await pool.fetchval("SELECT count(*) FROM rate_limit_windows") == 1


# The product document the API implements; CI has shared/ beside the clone, as here.
SPEC = ROOT.parent / "shared" / "spec" / "integration-api-overview.md"


def _documented_tiers() -> tuple[str, dict[str, int]]:
    """The header and the rows of the document's rate limiting table: {tier: requests}."""
    text = SPEC.read_text()
    section = text[text.index("### **Rate Limiting Tiers") :]
    section = section[: section.index("\n### ")]
    header = re.search(r"^\| Tier \| ([^|]+) \|", section, re.M)
    assert header is not None, section
    rows = re.findall(r"^\| \*\*(\w+)\*\* \| ([\d,]+) \|", section, re.M)
    return header.group(1).strip(), {name.lower(): int(n.replace(",", "")) for name, n in rows}


def test_tier_limits_are_the_product_documents() -> None:
    unit, documented = _documented_tiers()
    assert unit == "Requests/Hour" and WINDOW_SECONDS == 3600
    assert len(documented) == 4, documented
    assert TIER_LIMITS == documented


async def test_test_mode_has_its_own_relaxed_budget(
    start_api: Callable[..., Awaitable[ApiServer]], http: Any, key: str, live_key: str
) -> None:
    """Test mode counts apart from live, with ten times the tier's limit."""
    server = await start_api(limits={"free": 2})
    live = Client(http, server.url + "/api/v1", live_key)
    test = Client(http, server.url + "/api/v1", key)
    assert [(await live.get("/contacts")).status for _ in range(3)] == [200, 200, 429]
    replies = [await test.get("/contacts") for _ in range(21)]
    assert [r.status for r in replies] == [200] * 20 + [429]
    assert replies[0].headers["X-RateLimit-Limit"] == "20"


async def test_refused_and_publishable_requests_cannot_lock_the_tenant_out(
    start_api: Callable[..., Awaitable[ApiServer]], http: Any, live_key: str
) -> None:
    server = await start_api(limits={"free": 3})
    secret = Client(http, server.url + "/api/v1", live_key)
    public = secret.with_key(
        (await secret.post("/api-keys", json={"type": "publishable"})).data["key"]
    )
    # Refused writes from the public key are not counted at all.
    for _ in range(10):
        assert (await public.post("/contacts", json={"email": "a@b.test"})).status == 403
    # Its reads count in a bucket of their own: it can spend that, not the secret keys'.
    assert [(await public.get("/campaigns")).status for _ in range(4)] == [200, 200, 200, 429]
    reply = await secret.get("/contacts")
    assert reply.status == 200
    # The key creation above was the secret bucket's first request; this is its second.
    assert reply.headers["X-RateLimit-Remaining"] == "1"
