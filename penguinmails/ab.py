"""A/B variants: results per variant, and the winner's decision.

A campaign or a sequence step may have variants of its content, each with a weight; every
message records the variant it was created with (messages.variant), so the results come from
the messages and their events (`variant_stats`). With an A/B test (`ab_test`), `decide` picks
the winner by reply, click or open rate once every variant has `min_sample` messages
delivered at least `wait_hours` before (so replies and clicks had time to arrive), and
records it with the numbers it was made on and an `ab_test.decided` event:

- a campaign's held recipients (status 'held', never claimed by the MTA) are released with
  the winner's content. Should the test messages all be final and matured without reaching
  the sample (a small list, many bounces), the decision is made on the numbers there are:
  held recipients are never left waiting for a sample that cannot come.
- a sequence step's messages created after the decision carry the winner (the scheduler's
  statement reads it).

`decide` is run by the API process's scheduler tick (penguinmails.sequences.Scheduler); each
campaign is decided in its own transaction under its row lock (skipped if locked), each step
by a write that only the first tick makes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("penguinmails", "sql/ab.sql")

METRICS = {"reply_rate": "replied", "click_rate": "clicked", "open_rate": "opened"}
COUNTS = ("sent", "delivered", "opened", "clicked", "replied", "bounced")


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def variant_results(
    variants: Sequence[Mapping[str, Any]], rows: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each declared variant (in its order) with its counts and rates; a variant without a
    message yet has zeros."""
    by_name = {r["name"]: r for r in rows}
    results = []
    for variant in variants:
        row = by_name.get(variant["name"])
        counts = {c: int(row[c]) if row else 0 for c in COUNTS}
        results.append(
            {
                "name": variant["name"],
                "weight": variant["weight"],
                **counts,
                "delivery_rate": _rate(counts["delivered"], counts["sent"]),
                "open_rate": _rate(counts["opened"], counts["delivered"]),
                "click_rate": _rate(counts["clicked"], counts["delivered"]),
                "reply_rate": _rate(counts["replied"], counts["delivered"]),
                "bounce_rate": _rate(counts["bounced"], counts["sent"]),
            }
        )
    return results


async def campaign_variant_stats(
    conn: asyncpg.Connection | asyncpg.Pool, campaign_id: int, variants: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows = await conn.fetch(SQL["campaign_variant_stats"], campaign_id, None)
    return variant_results(variants, rows)


async def step_variant_stats(
    conn: asyncpg.Connection | asyncpg.Pool, sequence_id: int
) -> dict[int, list[asyncpg.Record]]:
    """Per step, its rows of counts per variant (variant_results makes them results)."""
    steps: dict[int, list[asyncpg.Record]] = {}
    for row in await conn.fetch(SQL["step_variant_stats"], sequence_id, None):
        steps.setdefault(row["step"], []).append(row)
    return steps


def choose(
    variants: Sequence[Mapping[str, Any]],
    sample: Iterable[Mapping[str, Any]],
    test: Mapping[str, Any],
    now: datetime,
    *,
    settle: bool = False,
) -> dict[str, Any] | None:
    """The decision (as recorded) if it can be made: every variant has `min_sample`
    delivered messages in `sample`, or `settle` (no more are coming). Highest rate wins;
    ties go to the larger sample, then to the variant declared first."""
    by_name = {r["name"]: r for r in sample}
    metric = METRICS[test["winner_by"]]
    scores = []
    for variant in variants:
        row = by_name.get(variant["name"])
        size = int(row["delivered"]) if row else 0
        hits = int(row[metric]) if row else 0
        scores.append({"name": variant["name"], "sample": size, "rate": _rate(hits, size)})
    if not settle and any(s["sample"] < test["min_sample"] for s in scores):
        return None
    best = max(enumerate(scores), key=lambda e: (e[1]["rate"], e[1]["sample"], -e[0]))[1]
    return {
        "variant": best["name"],
        "decided_at": now.isoformat(),
        "winner_by": test["winner_by"],
        "variants": scores,
    }


async def decide(pool: asyncpg.Pool, now: datetime | None = None) -> int:
    """Decide every A/B test that can be decided; answers how many were. `now` stands in for
    the database's clock (tests)."""
    decided = 0
    for row in await pool.fetch(SQL["undecided_campaigns"]):
        async with pool.acquire() as conn, conn.transaction():
            campaign = await conn.fetchrow(SQL["lock_undecided_campaign"], row["id"])
            if campaign is None:
                continue
            clock = now or await conn.fetchval("SELECT now()")
            test = campaign["ab_test"]
            cutoff = clock - timedelta(hours=test["wait_hours"])
            sample = await conn.fetch(SQL["campaign_variant_stats"], campaign["id"], cutoff)
            waiting = await conn.fetchval(SQL["campaign_test_waiting"], campaign["id"], cutoff)
            decision = choose(campaign["variants"], sample, test, clock, settle=not waiting)
            if decision is None:
                continue
            released = await conn.fetchval(
                SQL["release_held"], campaign["id"], decision, decision["variant"], clock
            )
            decided += 1
            log.info(
                "A/B winner chosen",
                extra={
                    "action": "ab_decided",
                    "campaign": campaign["id"],
                    "variant": decision["variant"],
                    "released": released,
                },
            )
    steps = await pool.fetch(SQL["undecided_steps"])
    samples: dict[int, dict[int, list[asyncpg.Record]]] = {}
    for step in steps:
        clock = now or await pool.fetchval("SELECT now()")
        test = step["ab_test"]
        cutoff = clock - timedelta(hours=test["wait_hours"])
        if step["sequence_id"] not in samples:
            by_step: dict[int, list[asyncpg.Record]] = {}
            for r in await pool.fetch(SQL["step_variant_stats"], step["sequence_id"], cutoff):
                by_step.setdefault(r["step"], []).append(r)
            samples[step["sequence_id"]] = by_step
        sample = samples[step["sequence_id"]].get(step["position"], [])
        decision = choose(step["variants"], sample, test, clock)
        if decision is None:
            continue
        if await pool.fetchval(SQL["decide_step"], step["sequence_id"], step["position"], decision):
            decided += 1
    return decided
