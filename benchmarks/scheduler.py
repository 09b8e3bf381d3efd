"""Scheduler: sequences' step scheduling and the identity claim at 100,000 active enrolments,
against the plain due-message claim, in one run on one database.

Setup (one `INSERT ... SELECT generate_series` each): N contacts (a third with a time zone of
their own), one two-step sequence with a weekday 09:00-17:00 window in America/New_York and a
pool of 100 sending identities (caps high enough that none holds: what is measured is their
bookkeeping), and N active enrolments waiting for step one. Then:

- schedule: `penguinmails.sequences.schedule` queues step one for every enrolment (batches
  of 500: the enrolment locks, the identity pick and signature, the window arithmetic, the
  message, its event and its sequence_messages row). Enrolments processed per second.
- identity claim: the queued step messages made due, drained by the MTA's claim
  (`mta.queue.claim`, 200 per batch, committed), which takes them through
  claim_batch's identity part (identity locks, rolling counts, identity_sends rows). Messages/s.
- baseline: the same messages with no identity, drained by the same call, which then takes
  them through the plain fair claim (no caps, no windows). Messages/s.

The figures to read are the ratios against the baseline, measured in the same run.

    python -m benchmarks scheduler [--quick] [--enrolments N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from benchmarks.mta import embedded_database, fresh_database, prepare
from benchmarks.report import Table, machine, write_json
from mta import queue
from penguinmails.database import connect
from penguinmails.sequences import schedule

BATCH = 200  # the MTA's default batch_size
OWNER = "bench-scheduler"
LEASE_SECONDS = 300.0
IDENTITIES = 100

SETUP = [
    """
    INSERT INTO identities (tenant_id, email, name, daily_cap, hourly_cap, signature_text)
    SELECT $1, 'rep' || g || '@bench.test', 'Rep ' || g, 1000000, 1000000, 'Rep ' || g
    FROM generate_series(1, $2::int) AS g
    """,
    """
    INSERT INTO contacts (tenant_id, email, first_name, custom_fields)
    SELECT $1, 'lead' || g || '@sink.test', 'Lead ' || g,
           CASE WHEN g % 3 = 0 THEN '{"timezone": "Europe/Berlin"}'::jsonb ELSE '{}' END
    FROM generate_series(1, $2::int) AS g
    """,
]
SEQUENCE = """
INSERT INTO sequences (tenant_id, name, from_email, stop_on, settings, window_days,
                       window_start, window_end, window_zone)
VALUES ($1, 'bench', 'sales@bench.test', ARRAY['reply', 'bounce', 'complaint', 'unsubscribe'],
        jsonb_build_object('identities', (SELECT jsonb_agg(public_id ORDER BY id)
                                          FROM identities WHERE tenant_id = $1),
                           'track_opens', false, 'track_clicks', false),
        ARRAY[1, 2, 3, 4, 5], '09:00', '17:00', 'America/New_York')
RETURNING id
"""
STEPS = """
INSERT INTO sequence_steps (sequence_id, position, delay_days, business_days, subject,
                            text_body)
VALUES ($1, 1, 0, false, 'Hello {{first_name}}', 'Hi {{first_name}}, a first note.'),
       ($1, 2, 2, true, NULL, 'Following up.')
"""
ENROL = """
INSERT INTO sequence_enrollments (tenant_id, sequence_id, contact_id)
SELECT $1, $2, id FROM contacts WHERE tenant_id = $1
"""


async def _drain(conn: Any, expected: int) -> float:
    """Seconds for the MTA's claim to take every due message, batch by batch, committed."""
    started = time.perf_counter()
    taken = 0
    while True:
        rows = await queue.claim(conn, BATCH, OWNER, LEASE_SECONDS)
        taken += len(rows)
        if not rows:
            break
    elapsed = time.perf_counter() - started
    if taken != expected:
        raise RuntimeError(f"the claim took {taken} messages, expected {expected}")
    return elapsed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    enrolments = args.enrolments or (10_000 if args.quick else 100_000)
    workdir, base_url = await asyncio.to_thread(embedded_database, "pm-bench-scheduler-")
    url = await fresh_database(base_url, "bench_scheduler")
    bench = await prepare(url, workdir)
    conn = await connect(url)
    try:
        for statement, count in zip(SETUP, (IDENTITIES, enrolments), strict=True):
            await conn.execute(statement, bench.tenant, count)
        sequence = await conn.fetchval(SEQUENCE, bench.tenant)
        await conn.execute(STEPS, sequence)
        await conn.execute(ENROL, bench.tenant, sequence)
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")

        started = time.perf_counter()
        done = await schedule(conn)
        scheduled = time.perf_counter() - started
        if done.queued != enrolments:
            raise RuntimeError(f"scheduled {done.queued} of {enrolments} enrolments")
        outside = await conn.fetchval(
            "SELECT count(*) FROM messages m JOIN sequence_messages sm ON sm.message_id = m.id"
            " JOIN sequence_enrollments e ON e.id = sm.enrollment_id"
            " JOIN contacts c ON c.id = e.contact_id"
            " WHERE extract(isodow FROM m.next_attempt_at AT TIME ZONE"
            "   coalesce(c.custom_fields ->> 'timezone', 'America/New_York')) > 5"
            "   OR (m.next_attempt_at AT TIME ZONE"
            "   coalesce(c.custom_fields ->> 'timezone', 'America/New_York'))::time"
            "   NOT BETWEEN '09:00' AND '17:00'"
        )
        if outside:
            raise RuntimeError(f"{outside} step messages are due outside the window")
        identities_used = await conn.fetchval(
            "SELECT count(DISTINCT identity_id) FROM messages WHERE identity_id IS NOT NULL"
        )

        # The window put them in the future; the claims measure the claim, so make them due.
        await conn.execute("UPDATE messages SET next_attempt_at = now() - interval '1 second'")
        await conn.execute("VACUUM (ANALYZE) messages")
        identity_claim = await _drain(conn, enrolments)

        await conn.execute(
            "UPDATE messages SET status = 'queued', identity_id = NULL, lease_owner = NULL,"
            " lease_token = NULL, lease_expires_at = NULL,"
            " next_attempt_at = now() - interval '1 second'"
        )
        await conn.execute("VACUUM (ANALYZE) messages")
        plain_claim = await _drain(conn, enrolments)
    finally:
        await conn.close()
    return {
        "benchmark": "scheduler",
        "quick": args.quick,
        "machine": machine(),
        "load_average": os.getloadavg(),
        "enrolments": enrolments,
        "identities": IDENTITIES,
        "identities_used": identities_used,
        "schedule_seconds": scheduled,
        "schedule_per_second": enrolments / scheduled,
        "identity_claim_per_second": enrolments / identity_claim,
        "plain_claim_per_second": enrolments / plain_claim,
    }


def report(results: dict[str, Any]) -> None:
    base = results["plain_claim_per_second"]
    table = Table(["phase", "per second", "vs plain claim"])
    schedule_rate = results["schedule_per_second"]
    claim_rate = results["identity_claim_per_second"]
    table.add(
        ["schedule (enrolments: window, identity)", schedule_rate, f"{schedule_rate / base:.2f}x"]
    )
    table.add(["identity claim (messages)", claim_rate, f"{claim_rate / base:.2f}x"])
    table.add(["plain claim (messages, baseline)", base, "1.00x"])
    print(
        f"\n{results['enrolments']:,} active enrolments, {results['identities']} identities "
        f"({results['identities_used']} used); claims of {BATCH}, committed"
    )
    print(table.render())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks scheduler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--enrolments", type=int, default=0, help="100,000 (quick: 10,000)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    report(results)
    write_json("scheduler", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
