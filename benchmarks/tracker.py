"""Tracker: open-pixel requests per second with recording on, against the same server with
recording off, in one run.

The server is the real tracker app (aiohttp, uvloop when available) in this process; the load
comes from `wrk` in another process (one thread, so the server keeps a core of its own), or
from an aiohttp client when wrk is not installed. Requests cycle through the pixels of many
messages, so recording does real work: batched inserts, first-open checks, classification.
With recording on, every 200 is a committed row (the handler waits for its batch), and the
run checks that the number of rows equals the number of 200s.

Each request carries one of a few real mail-client user agents and an X-Forwarded-For address
from one of several countries' networks (the tracker believes the header from loopback, as
from its own reverse proxy), so device and country classification do the work they do in
production: a handful of distinct agents (the cache's case) and many distinct addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.report import Table, machine, write_json
from benchmarks.wrk import run_wrk
from penguinmails.config import Settings
from penguinmails.database import create_pool, embedded_url
from penguinmails.links import Links
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.migrations import migrate
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from penguinmails.webhooks.endpoints import create_endpoint
from tracker.server import Tracker

# What opens look like: mail clients on phones, tablets and desktops, and the image proxies.
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0",
)
# First octets of networks in several countries; the other three vary per request.
NETWORKS = (8, 81, 1, 185, 41, 200, 133, 151, 62, 177, 203, 91)


def client_address(i: int) -> str:
    return f"{NETWORKS[i % len(NETWORKS)]}.{(i // 7) % 250 + 1}.{(i // 3) % 256}.{i % 250 + 1}"


_WRK_SCRIPT = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local agents = {%(agents)s}
local networks = {%(networks)s}
local i = 0
request = function()
  i = i %% #paths + 1
  local n = i - 1
  local address = string.format("%%d.%%d.%%d.%%d", networks[n %% #networks + 1],
    math.floor(n / 7) %% 250 + 1, math.floor(n / 3) %% 256, n %% 250 + 1)
  return wrk.format("GET", paths[i], {["User-Agent"] = agents[n %% #agents + 1],
                                      ["X-Forwarded-For"] = address})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"errors":%%d,"non2xx":%%d,"seconds":%%f,"p50_ms":%%f,"p99_ms":%%f}\\n',
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


async def _database(workdir: Path) -> str:
    base = await asyncio.to_thread(embedded_url, workdir)
    admin = await asyncpg.connect(base)
    try:
        await admin.execute("DROP DATABASE IF EXISTS bench_tracker WITH (FORCE)")
        await admin.execute("CREATE DATABASE bench_tracker")
    finally:
        await admin.close()
    url = base.replace("/postgres?", "/bench_tracker?")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def _pixels(pool: asyncpg.Pool, settings: Settings, count: int) -> list[str]:
    tenant = await ensure_tenant(pool, "bench")
    ids = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@bench.test",
            subject="bench",
            html="<p>hi</p>",
            recipients=[f"r{i}@bench.test" for i in range(count)],
        ),
    )
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = now() - interval '1 hour'"
        " WHERE id = ANY($1)",
        ids,
    )
    links = Links(LinkSigner(server_keys(settings)), "")
    return [links.open_url(i) for i in ids]


def _wrk(url: str, paths: Path, seconds: float, connections: int) -> dict[str, Any]:
    script = paths.with_suffix(".lua")
    script.write_text(
        _WRK_SCRIPT
        % {
            "paths": str(paths),
            "agents": ", ".join('"' + a.replace('"', '\\"') + '"' for a in AGENTS),
            "networks": ", ".join(map(str, NETWORKS)),
        }
    )
    return run_wrk(url, script, seconds, connections)


async def _aiohttp_load(
    url: str, paths: list[str], seconds: float, connections: int
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "non2xx": 0}
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            headers = {
                "User-Agent": AGENTS[i % len(AGENTS)],
                "X-Forwarded-For": client_address(i),
            }
            try:
                async with session.get(url + paths[i % len(paths)], headers=headers) as response:
                    await response.read()
                    counts["non2xx" if response.status >= 300 else "requests"] += 1
            except aiohttp.ClientError:
                counts["errors"] += 1
            latencies.append(time.perf_counter() - started)
            i += connections

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, n) for n in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        **counts,
        "requests": counts["requests"] + counts["non2xx"],
        "seconds": elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    }


async def _measure(
    pool: asyncpg.Pool,
    settings: Settings,
    paths: list[str],
    path_file: Path,
    *,
    record: bool,
    seconds: float,
    connections: int,
    recorder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    before = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.opened'")
    async with Tracker(pool, settings, record=record, dispatch=False, recorder=recorder) as tracker:
        cpu = time.process_time()
        if shutil.which("wrk"):
            load = await asyncio.to_thread(_wrk, tracker.url, path_file, seconds, connections)
            load["client"] = "wrk -t1"
        else:
            load = await _aiohttp_load(tracker.url, paths, seconds, connections)
            load["client"] = "aiohttp"
        load["server_cpu_percent"] = (time.process_time() - cpu) / load["seconds"] * 100
        flush = {
            s.name: s.value
            for metric in tracker.metrics.hit_flush_seconds.collect()
            for s in metric.samples
            if s.name.endswith(("_count", "_sum"))
        }
    recorded = (
        await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.opened'") - before
    )
    ok = load["requests"] - load["non2xx"]
    flushes = flush.get("penguinmails_tracker_hit_flush_seconds_count", 0.0)
    # wrk stops counting at the deadline with requests still in flight; those are recorded
    # too, so every counted 200 is recorded when the rows are at least as many.
    return {
        **load,
        "requests_per_second": load["requests"] / load["seconds"],
        "ok": ok,
        "recorded": recorded,
        "all_recorded": (recorded >= ok) if record else None,
        "batches": int(flushes),
        "mean_batch": recorded / flushes if flushes else None,
        "mean_flush_ms": flush.get("penguinmails_tracker_hit_flush_seconds_sum", 0.0)
        / flushes
        * 1000
        if flushes
        else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    connection_counts = (
        [args.connections] if args.connections else ([64] if args.quick else [64, 256])
    )
    workdir = Path(tempfile.mkdtemp(prefix="pm-bench-tracker-"))
    atexit.register(shutil.rmtree, workdir, True)  # after the embedded server's own stop
    url = await _database(workdir)
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "paths": {"data_dir": str(workdir)},
            "security": {"secret_keys": ["bench-key"]},
            "tracker": {"listen": "127.0.0.1:0"},
            "webhooks": {"allow_private_targets": True},
        }
    )
    recorder: dict[str, Any] = {}
    if args.interval:
        recorder["interval"] = args.interval / 1000
    if args.batch:
        recorder["max_batch"] = args.batch
    results: dict[str, Any] = {
        "machine": machine(),
        "seconds": seconds,
        "messages": args.messages,
        "recorder": recorder,
        "runs": [],
    }
    pool = await create_pool(url, 2, 10)
    try:
        paths = await _pixels(pool, settings, args.messages)
        path_file = workdir / "paths.txt"
        path_file.write_text("\n".join(paths) + "\n")
        modes: list[tuple[str, bool]] = [("recording off", False), ("recording on", True)]
        if not args.quick:
            # Recording with a webhook endpoint subscribed: every open also writes an outbox
            # row through the fan-out trigger (no dispatcher runs, so nothing is sent).
            modes.append(("recording on + webhook fan-out", True))
        for connections in connection_counts:
            for name, record in modes:
                if name.endswith("fan-out"):
                    tenant = await ensure_tenant(pool, "bench")
                    await create_endpoint(pool, tenant, "http://127.0.0.1:9/", settings=settings)
                measured = await _measure(
                    pool,
                    settings,
                    paths,
                    path_file,
                    record=record,
                    seconds=seconds,
                    connections=connections,
                    recorder=recorder,
                )
                results["runs"].append({"mode": name, "connections": connections, **measured})
            await pool.execute("DELETE FROM webhooks")
    finally:
        await pool.close()
    return results


def report(results: dict[str, Any]) -> None:
    table = Table(
        [
            "connections",
            "mode",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "non-2xx",
            "recorded",
            "all 200s recorded",
            "mean batch",
            "flush ms",
            "server CPU %",
        ]
    )
    for r in results["runs"]:
        table.add(
            [
                r["connections"],
                r["mode"],
                r["requests_per_second"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r["non2xx"],
                r["recorded"] if r["all_recorded"] is not None else None,
                r["all_recorded"],
                r["mean_batch"],
                r["mean_flush_ms"],
                r["server_cpu_percent"],
            ]
        )
    print(
        f"\nTracker open pixel, {results['seconds']:g}s per mode, "
        f"client: {results['runs'][0]['client']}, server: one process"
    )
    print(table.render())
    by = {(r["connections"], r["mode"]): r["requests_per_second"] for r in results["runs"]}
    for (connections, mode), rate in by.items():
        if mode != "recording off":
            off = by[(connections, "recording off")]
            print(f"{connections} connections, {mode}: {rate / off:.0%} of the recording-off rate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks tracker", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="one connection count (default: 64, and 256 without --quick)",
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="hit batch window in ms (default: the recorder's)",
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="hits per batch at most (default: the recorder's)"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        results = uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        results = asyncio.run(run(args))
    report(results)
    write_json("tracker", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
