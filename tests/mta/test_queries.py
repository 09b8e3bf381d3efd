"""The hot queue queries use their partial indexes, however many finished rows pile up."""

from __future__ import annotations

import orjson

from mta.queue import SQL


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
    assert "messages_due_idx" in indexes
    assert "messages_lease_idx" in indexes
    assert ("Seq Scan", "messages") not in _scans(plan)


def _scans(plan: dict) -> set[tuple[str, str]]:
    found = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.add((node["Node Type"], node["Relation Name"]))
        stack.extend(node.get("Plans", []))
    return found
