"""Scale: the queue claim's cost and the MTA's memory with a small and a large queue.

For each queue size (10,000, 1,000,000 and 10,000,000 queued messages; --quick, which CI
runs, 10,000 and 200,000), the rows are written with one `INSERT ... SELECT
generate_series` and the table vacuumed and analysed (what autovacuum would have done),
then:

- claim: `mta.queue.claim` (the claim_batch statement, 200 per batch as the MTA's default)
  timed over many claims, each in a transaction rolled back so every claim sees the same
  queue; and over a run of committed claims that drain the queue as the MTA does. The plan
  is checked to read the due-messages index. Claim time should stay flat: the figure to
  read is the large/small ratio.
- size: the messages table's heap and its indexes, per million messages, from
  pg_table_size and pg_indexes_size after the fill (the WAL of the fill per row, too).
- MTA: one `penguinmails mta` process (DKIM signing, tracking on) delivers a few thousand
  of the queued messages to a loopback sink; its peak RSS and its rate while it does. The
  MTA leases at most `max_in_flight` messages, so its memory must not grow with the queue.
  The WAL written while it does, per delivered message (claim, outcome, events; the cluster
  is the benchmark's own, so nothing else writes), is the figure docs/scaling.md derives one
  primary's ceiling from.
- archive: `penguinmails maintain` then moves what the MTA delivered out of the live
  partition into this week's (migration 0044), as the hourly timer does; the WAL that costs
  per message comes on top of the delivery's.

    python -m benchmarks scale [--quick] [--small N] [--large N] [--huge N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.mta import (
    DOMAIN,
    Bench,
    Sampler,
    embedded_database,
    fresh_database,
    mta_env,
    prepare,
    start_mtas,
    start_sink,
)
from benchmarks.report import Table, machine, write_json
from mta import queue
from penguinmails.config import RetentionSettings
from penguinmails.database import connect
from penguinmails.retention import maintain

BATCH = 200  # the MTA's default batch_size
OWNER = "bench-claim"
LEASE_SECONDS = 300.0
HTML = (
    "<p>Hello {{name}},</p><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>"
    '<p><a href="https://bench.test/offer/1">Offer 1</a></p>'
    '<p><a href="https://bench.test/offer/2">Offer 2</a></p>'
)
FILL = """
INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain, subject,
                      html_body, personalization, settings)
SELECT $1, 'scale-' || g || '@bench.test', 'news@bench.test', 'user' || g || '@' || $2,
       $2, 'Hello {{name}}', $3, jsonb_build_object('name', 'User ' || g), $4::jsonb
FROM generate_series(1, $5::bigint) AS g
"""


async def fill(bench: Bench, rows: int) -> dict[str, Any]:
    conn = await connect(bench.url)
    try:
        await conn.execute("TRUNCATE messages, events, suppressions RESTART IDENTITY CASCADE")
        wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
        started = time.perf_counter()
        await conn.execute(
            FILL,
            bench.tenant,
            DOMAIN,
            HTML,
            {"track_opens": True, "track_clicks": True},  # the connection's jsonb codec
            rows,
        )
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
        await conn.execute("VACUUM (ANALYZE) messages")
        elapsed = time.perf_counter() - started
        # Every partition's (the queue is all in messages_live; the weeks are empty).
        table = await conn.fetchval(
            "SELECT sum(pg_table_size(relid))::bigint FROM pg_partition_tree('messages')"
        )
        indexes = await conn.fetchval(
            "SELECT sum(pg_indexes_size(relid))::bigint FROM pg_partition_tree('messages')"
        )
        # A queue that has sat there is checkpointed; without this, the fill's checkpoint
        # would land in the timed part and be charged to the large queue.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    per_million = 1_000_000 / rows
    return {
        "fill_seconds": elapsed,
        "table_mb_per_million": table * per_million / 2**20,
        "indexes_mb_per_million": indexes * per_million / 2**20,
        "fill_wal_bytes_per_message": float(wal) / rows,
    }


async def time_claims(bench: Bench, claims: int, drain: int) -> dict[str, Any]:
    conn = await connect(bench.url)
    try:
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + queue.SQL["claim_batch"], BATCH, OWNER, LEASE_SECONDS
        )
        plan_text = orjson.dumps(plan).decode()
        rolled: list[float] = []
        for n in range(claims + 5):  # the first five warm the cache and the statement
            transaction = conn.transaction()
            await transaction.start()
            started = time.perf_counter()
            rows = await queue.claim(conn, BATCH, OWNER, LEASE_SECONDS)
            if n >= 5:
                rolled.append(time.perf_counter() - started)
            await transaction.rollback()
            assert len(rows) == BATCH
        committed: list[float] = []
        wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
        for _ in range(drain):
            started = time.perf_counter()
            rows = await queue.claim(conn, BATCH, OWNER, LEASE_SECONDS)
            committed.append(time.perf_counter() - started)
            assert len(rows) == BATCH
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
        # Give the drained rows back, so the MTA phase sees the whole queue.
        await conn.execute(
            "UPDATE messages SET status = 'queued', lease_owner = NULL, lease_token = NULL,"
            " lease_expires_at = NULL WHERE lease_owner = $1",
            OWNER,
        )
    finally:
        await conn.close()
    rolled.sort()
    committed.sort()
    return {
        "plan_uses_due_index": "messages_fair_due_idx" in plan_text,
        "claims_rolled_back": claims,
        "claim_ms_p50": statistics.median(rolled) * 1000,
        "claim_ms_p99": rolled[min(len(rolled) - 1, int(len(rolled) * 0.99))] * 1000,
        "claim_ms_mean": statistics.fmean(rolled) * 1000,
        "claims_committed": drain,
        "committed_claim_ms_p50": statistics.median(committed) * 1000,
        "committed_claim_ms_max": committed[-1] * 1000,
        # Each claimed row is a new tuple version with new entries in every index (status is
        # in the partial indexes' predicates, so no HOT update); right after a checkpoint
        # each first-touched index page is also a full page image in the WAL.
        "wal_kb_per_committed_claim": float(wal) / drain / 1024,
    }


async def mta_memory(bench: Bench, deliver: int, postfix: bool) -> dict[str, Any]:
    """One MTA delivers `deliver` messages from the full queue; its peak RSS meanwhile."""
    sink = start_sink(postfix)
    env = mta_env(bench, sink.port, {})
    logs = [bench.workdir / "scale-mta.log"]
    conn = await connect(bench.url)
    wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
    sent_before = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")
    procs = start_mtas(env, logs)
    sampler = Sampler([p.pid for p in procs])
    try:
        await asyncio.sleep(0.3)
        sampler.sample()
        idle_rss = sampler.peak_rss
        started = progressed = time.perf_counter()
        sent = 0
        while sent < deliver:
            await asyncio.sleep(0.1)
            sampler.sample()
            if procs[0].poll() is not None:
                raise RuntimeError(f"the MTA exited ({procs[0].returncode}):\n{_tail(logs[0])}")
            now = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")
            if now > sent:
                sent, progressed = now, time.perf_counter()
            elif time.perf_counter() - progressed > 30:
                raise RuntimeError(f"the MTA stopped delivering at {sent}:\n{_tail(logs[0])}")
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        sink.stop()
        try:
            wal = await conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before
            )
            delivered = (
                await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'")
                - sent_before
            )
        finally:
            await conn.close()
    text = logs[0].read_text(errors="replace")
    if '"dkim_unsigned"' in text:
        raise RuntimeError("the MTA sent unsigned mail; DKIM signing is not on in this run")
    archive = await archive_delivered(bench)
    return {
        **archive,
        "delivered": sent,
        "sink": sink.kind,
        # From the MTA's start: it claims the first batch while booting.
        "messages_per_second": sent / elapsed,
        "peak_rss_mb": sampler.peak_rss / 2**20,
        "early_rss_mb": idle_rss / 2**20,
        # Everything the cluster wrote while the MTA ran, over what it delivered by the end.
        "wal_bytes_per_delivered": float(wal) / max(delivered, 1),
    }


async def archive_delivered(bench: Bench) -> dict[str, Any]:
    """`penguinmails maintain` moving what the MTA delivered out of the live partition, as the
    hourly timer would: the WAL that costs per message, on top of the delivery's."""
    conn = await connect(bench.url)
    try:
        wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
        started = time.perf_counter()
        report = await maintain(conn, RetentionSettings())
        elapsed = time.perf_counter() - started
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
    finally:
        await conn.close()
    if not report.archived:
        raise RuntimeError("maintain archived none of the delivered messages")
    return {
        "archived": report.archived,
        "archive_seconds": elapsed,
        "archive_wal_bytes_per_message": float(wal) / report.archived,
    }


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [args.small, args.large or (200_000 if args.quick else 1_000_000)]
    if not args.quick:
        sizes.append(args.huge)  # 10,000,000: tens of GB and an hour; never in CI
    claims = 100 if args.quick else 300
    drain = 10 if args.quick else 25
    deliver = args.deliver or (2000 if args.quick else 5000)
    workdir, base_url = await asyncio.to_thread(embedded_database, "pm-bench-scale-")
    url = await fresh_database(base_url, "bench_scale")
    bench = await prepare(url, workdir)
    postfix = bool(shutil.which("smtp-sink"))
    if not postfix:
        print("smtp-sink not installed: the MTA delivers to the project's sink instead")
    results: dict[str, Any] = {
        "benchmark": "scale",
        "quick": args.quick,
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "batch": BATCH,
        "deliver": deliver,
        "states": [],
    }
    for rows in sizes:
        state: dict[str, Any] = {"queued": rows, **(await fill(bench, rows))}
        state.update(await time_claims(bench, claims, drain))
        state["mta"] = await mta_memory(bench, deliver, postfix)
        results["states"].append(state)
    results["load_average_after"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> None:
    small, large = results["states"][0], results["states"][-1]
    table = Table(
        [
            "queued",
            "fill s",
            "index",
            "claim ms p50",
            "claim ms p99",
            "committed p50",
            "WAL KB/claim",
            "table MB/M",
            "index MB/M",
            "MTA msg/s",
            "MTA WAL B/msg",
            "MTA peak RSS MB",
            "archive WAL B/msg",
        ]
    )
    for s in results["states"]:
        table.add(
            [
                f"{s['queued']:,}",
                s["fill_seconds"],
                "due idx" if s["plan_uses_due_index"] else "NOT USED",
                s["claim_ms_p50"],
                s["claim_ms_p99"],
                s["committed_claim_ms_p50"],
                s["wal_kb_per_committed_claim"],
                s["table_mb_per_million"],
                s["indexes_mb_per_million"],
                s["mta"]["messages_per_second"],
                s["mta"]["wal_bytes_per_delivered"],
                s["mta"]["peak_rss_mb"],
                s["mta"]["archive_wal_bytes_per_message"],
            ]
        )
    table.add(
        [
            "ratio",
            None,
            "",
            large["claim_ms_p50"] / small["claim_ms_p50"],
            large["claim_ms_p99"] / small["claim_ms_p99"],
            large["committed_claim_ms_p50"] / small["committed_claim_ms_p50"],
            large["wal_kb_per_committed_claim"] / small["wal_kb_per_committed_claim"],
            large["table_mb_per_million"] / small["table_mb_per_million"],
            large["indexes_mb_per_million"] / small["indexes_mb_per_million"],
            large["mta"]["messages_per_second"] / small["mta"]["messages_per_second"],
            large["mta"]["wal_bytes_per_delivered"] / small["mta"]["wal_bytes_per_delivered"],
            large["mta"]["peak_rss_mb"] / small["mta"]["peak_rss_mb"],
            large["mta"]["archive_wal_bytes_per_message"]
            / small["mta"]["archive_wal_bytes_per_message"],
        ]
    )
    print(
        f"\nFill WAL per message: {small['fill_wal_bytes_per_message']:,.0f} bytes (bulk"
        " INSERT ... SELECT; the API's inserts write more per row)"
    )
    print(
        f"\nClaim of {results['batch']} (rolled back, x{small['claims_rolled_back']}; committed, "
        f"x{small['claims_committed']}) and one MTA delivering {results['deliver']:,} "
        f"to {small['mta']['sink']}; ratio = large queue / small queue"
    )
    print(table.render())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=0, help="1,000,000 (quick: 200,000)")
    parser.add_argument(
        "--huge", type=int, default=10_000_000, help="10,000,000, in the full run only"
    )
    parser.add_argument("--deliver", type=int, default=0, help="5,000 (quick: 2,000)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    report(results)
    write_json("scale", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
