"""The hot queue queries use their partial indexes, however many finished rows pile up."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from mta import queue
from mta.queue import SQL
from penguinmails.messages import ensure_tenant


def _index_names(plan: dict) -> set[str]:
    found = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        stack.extend(node.get("Plans", []))
    return found


async def _plan(conn, sql: str, *args) -> dict:
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    parsed = orjson.loads(raw) if isinstance(raw, str) else raw
    return parsed[0]["Plan"]


async def test_claim_reads_only_due_rows_through_the_partial_indexes(pool):
    tenant = await pool.fetchval("INSERT INTO tenants (name) VALUES ('plan') RETURNING id")
    # 50,000 finished messages and a handful due: the shape of a busy day.
    await pool.execute(
        """INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,
                                 status)
           SELECT $1, 'm' || g || '@plan.test', 'a@plan.test', 'r' || g || '@dest.test',
                  'dest.test', CASE WHEN g % 10000 = 0 THEN 'queued' ELSE 'sent' END
           FROM generate_series(1, 50000) g""",
        tenant,
    )
    await pool.execute("ANALYZE messages")
    async with pool.acquire() as conn, conn.transaction():
        plan = await _plan(conn, SQL["claim_batch"], 100, "planner", 60.0)

    indexes = _index_names(plan)
    assert "messages_fair_due_idx" in indexes
    assert "messages_lease_idx" in indexes
    assert ("Seq Scan", "messages") not in _scans(plan)


async def test_the_identity_claim_reads_only_identities_due_rows(pool):
    tenant = await pool.fetchval("INSERT INTO tenants (name) VALUES ('plan') RETURNING id")
    identity = await pool.fetchval(
        "INSERT INTO identities (tenant_id, email, daily_cap) VALUES ($1, 'a@plan.test', 50)"
        " RETURNING id",
        tenant,
    )
    # 50,000 finished messages, a few of them the identity's, and a handful of its due.
    await pool.execute(
        """INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,
                                 status, identity_id)
           SELECT $1, 'm' || g || '@plan.test', 'a@plan.test', 'r' || g || '@dest.test',
                  'dest.test', CASE WHEN g % 10000 = 0 THEN 'queued' ELSE 'sent' END,
                  CASE WHEN g % 100 = 0 THEN $2::bigint END
           FROM generate_series(1, 50000) g""",
        tenant,
        identity,
    )
    await pool.execute(
        "INSERT INTO identity_sends (identity_id, message_id, sent_at)"
        " SELECT $1, g, now() - g * interval '1 minute' FROM generate_series(1, 5000) g",
        identity,
    )
    await pool.execute("ANALYZE")
    async with pool.acquire() as conn, conn.transaction():
        plan = await _plan(conn, SQL["claim_batch"], 100, "planner", 60.0)

    indexes = _index_names(plan)
    assert "messages_identity_due_idx" in indexes
    assert "identity_sends_window_idx" in indexes or "identity_sends_pkey" in indexes
    assert ("Seq Scan", "messages") not in _scans(plan)
    assert ("Seq Scan", "identity_sends") not in _scans(plan)


def _scans(plan: dict) -> set[tuple[str, str]]:
    found = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.add((node["Node Type"], node["Relation Name"]))
        stack.extend(node.get("Plans", []))
    return found


async def _queue(pool: asyncpg.Pool, tenant: str, count: int, **columns: object) -> int:
    tenant_id = await ensure_tenant(pool, tenant)
    names = ", ".join(columns)
    values = ", ".join(f"${i + 3}" for i in range(len(columns)))
    await pool.execute(
        f"""INSERT INTO messages (tenant_id, message_id, from_email, recipient,
                                  recipient_domain, status{", " + names if names else ""})
            SELECT $1, $2 || g || '@q.test', 'a@q.test', 'r' || g || '@dest.test', 'dest.test',
                   'queued'{", " + values if values else ""}
            FROM generate_series(1, {count}) g""",
        tenant_id,
        f"{tenant}-{count}-{len(columns)}-",
        *columns.values(),
    )
    return tenant_id


async def test_a_backlog_does_not_delay_another_tenant_s_fresh_messages(
    pool: asyncpg.Pool,
) -> None:
    big = await _queue(pool, "big", 5000)  # due since before the small tenant's messages
    await pool.execute("UPDATE messages SET next_attempt_at = now() - interval '1 hour'")
    small = await _queue(pool, "small", 10)
    third = await _queue(pool, "third", 150)
    async with pool.acquire() as conn:
        rows = await queue.claim(conn, 200, "fair", 60.0)
    by_tenant = [r["tenant_id"] for r in rows]
    assert len(rows) == 200
    assert by_tenant.count(small) == 10  # all of them, in the first claim
    assert by_tenant.count(third) == 95 and by_tenant.count(big) == 95  # round robin
    async with pool.acquire() as conn:
        rest = await queue.claim(conn, 200, "fair", 60.0)
    assert {r["tenant_id"] for r in rest} == {big, third} and len(rest) == 200


async def test_transactional_messages_go_before_bulk_in_every_tenant(pool: asyncpg.Pool) -> None:
    await _queue(pool, "acme", 300)  # bulk, due first
    await pool.execute("UPDATE messages SET next_attempt_at = now() - interval '1 hour'")
    await _queue(pool, "acme", 3, priority=0)
    await _queue(pool, "other", 2, priority=0)
    async with pool.acquire() as conn:
        rows = await queue.claim(conn, 5, "prio", 60.0)
    # The message ids say which insert made them: acme-3-1-.. and other-2-1-.. are priority 0.
    assert sorted(r["message_id"].rsplit("-", 1)[0] for r in rows) == [
        "acme-3-1",
        "acme-3-1",
        "acme-3-1",
        "other-2-1",
        "other-2-1",
    ]


@pytest.mark.slow
async def test_the_fair_claim_reads_indexes_only_with_a_million_queued(
    pool: asyncpg.Pool,
) -> None:
    """A million queued for one tenant, fifty more tenants with a few each, and a million
    finished rows: the claim still reads only the partial indexes."""
    await _queue(pool, "big", 1_000_000)
    for n in range(50):
        await _queue(pool, f"t{n}", 5)
    await pool.execute("UPDATE messages SET status = 'sent' WHERE id % 2 = 0")
    await pool.execute("VACUUM ANALYZE messages")
    async with pool.acquire() as conn, conn.transaction():
        plan = await _plan(conn, SQL["claim_batch"], 200, "planner", 60.0)
        rows = await queue.claim(conn, 200, "planner", 60.0)
    assert "messages_fair_due_idx" in _index_names(plan)
    assert ("Seq Scan", "messages") not in _scans(plan)
    assert len({r["tenant_id"] for r in rows}) == 51
