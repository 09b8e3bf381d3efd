"""MTA end to end: messages queued in Postgres, delivered over loopback to an SMTP sink.

Baselines measured in the same run, on the same sink, with the same message size and
session count: Postfix's `smtp-source` (the practical limit of this machine) and a bare
aiosmtplib loop (the floor any Python sender pays). The MTA's figure is read against them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import psutil

from benchmarks.report import Table, machine, write_json
from penguinmails.database import connect, embedded_url
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.migrations import migrate

SESSIONS = 10  # the MTA's default per-domain connection cap; the baselines use the same
DOMAIN = "sink.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sink:
    port: int
    process: subprocess.Popen[bytes]
    kind: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def ensure_postfix_tools() -> bool:
    """smtp-sink/smtp-source from Debian's postfix package, installed if missing and possible."""
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], env=env,
                       capture_output=True, timeout=300, check=False)
    return bool(shutil.which("smtp-sink") and shutil.which("smtp-source"))


def start_sink(postfix: bool) -> Sink:
    port = free_port()
    if postfix:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(["smtp-sink", *user, "-c", f"127.0.0.1:{port}", "1024"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "postfix smtp-sink"
    else:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sink", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "penguinmails fast sink"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Sink(port, proc, kind)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sink did not start")


def body_of(size: int) -> str:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, {{name}}.\n"
    return (line * (size // len(line) + 1))[:size]


def smtp_source_rate(port: int, messages: int, size: int) -> float | None:
    if not shutil.which("smtp-source"):
        return None
    start = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-s", str(SESSIONS), "-m", str(messages), "-l", str(size), "-c",
         "-f", "bench@bench.test", "-t", f"rcpt@{DOMAIN}", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=600,
    )
    return messages / (time.perf_counter() - start)


async def aiosmtplib_rate(port: int, messages: int, size: int) -> float:
    payload = (f"From: bench@bench.test\r\nTo: rcpt@{DOMAIN}\r\nSubject: bench\r\n\r\n"
               + "x" * (size - 2) + "\r\n").encode()
    per_session = messages // SESSIONS

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for _ in range(per_session):
            await client.sendmail("bench@bench.test", [f"rcpt@{DOMAIN}"], payload)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(SESSIONS)))
    return per_session * SESSIONS / (time.perf_counter() - start)


async def fresh_database(base_url: str, name: str) -> str:
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = base_url.replace("/postgres?", f"/{name}?")
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


class Sampler:
    """CPU seconds and peak RSS of a set of processes, sampled while they run."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak_rss = 0
        self.cpu = 0.0

    def sample(self) -> None:
        rss, cpu = 0, 0.0
        for proc in self.procs:
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu = max(self.cpu, cpu)


async def mta_run(url: str, data_dir: Path, port: int, messages: int, size: int,
                  processes: int, profile: bool = False) -> dict[str, Any]:
    conn = await connect(url)
    await conn.execute("TRUNCATE messages, events RESTART IDENTITY CASCADE")
    tenant = await ensure_tenant(conn, "bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update({
        "PENGUINMAILS_DATABASE__URL": url,
        "PENGUINMAILS_PATHS__DATA_DIR": str(data_dir),
        "PENGUINMAILS_MTA__ROUTES": f'{{"{DOMAIN}": "127.0.0.1:{port}"}}',
        "PENGUINMAILS_MTA__DEFAULT_THROTTLE__MAX_CONNECTIONS": str(SESSIONS // processes),
        "PENGUINMAILS_MTA__DEFAULT_THROTTLE__MESSAGES_PER_CONNECTION": "1000",
        "PENGUINMAILS_SECURITY__SECRET_KEYS": '["bench-key"]',
        "PENGUINMAILS_LOGGING__LEVEL": "WARNING",
    })
    procs = [subprocess.Popen([sys.executable, "-m", "penguinmails.cli", "mta"], env=env)
             for _ in range(processes)]
    try:
        return await _measure(conn, tenant, procs, messages, size, profile)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await conn.close()


async def _measure(conn: Any, tenant: int, procs: list[subprocess.Popen[bytes]], messages: int,
                   size: int, profile: bool) -> dict[str, Any]:
    processes = len(procs)
    sampler = Sampler([p.pid for p in procs])
    spies = []
    if profile and shutil.which("py-spy"):
        from benchmarks.report import RESULTS

        RESULTS.mkdir(exist_ok=True)
        spies = [subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "--format", "raw",
                                   "-r", "250", "-o", str(RESULTS / f"mta-profile-{i}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i, p in enumerate(procs)]
    await asyncio.sleep(1.5)  # let the workers start and go idle on LISTEN
    sampler.sample()
    cpu_before = sampler.cpu
    text = body_of(size)
    recipients = [f"user{i}@{DOMAIN}" for i in range(messages)]
    draft = Draft(from_email="news@bench.test", subject="Hello {{name}}", recipients=recipients,
                  text=text, personalization=[{"name": f"User {i}"} for i in range(messages)],
                  settings={"track_opens": True, "track_clicks": True})
    start = time.time()
    await enqueue(conn, tenant, draft)
    final = ("sent", "bounced", "failed", "deferred")
    while True:
        await asyncio.sleep(0.2)
        sampler.sample()
        done = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE status = ANY($1::text[])", list(final))
        if done >= messages:
            break
    rows = await conn.fetch(
        "SELECT extract(epoch FROM sent_at - created_at) AS latency, "
        "extract(epoch FROM sent_at) AS at FROM messages WHERE status = 'sent'")
    sent = len(rows)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    latencies = sorted(float(r["latency"]) for r in rows)
    elapsed = max(float(r["at"]) for r in rows) - start
    return {
        "processes": processes,
        "messages": messages,
        "sent": sent,
        "messages_per_second": sent / elapsed,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[int(len(latencies) * 0.99) - 1],
        "cpu_seconds": sampler.cpu - cpu_before,
        "peak_rss_mb": sampler.peak_rss / 2**20,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    messages = args.messages or (2000 if args.quick else 20000)
    sizes = [5_000] if args.quick else [5_000, 100_000]
    process_counts = [1] if args.quick else [1, 2]
    postfix = ensure_postfix_tools()
    workdir = Path(tempfile.mkdtemp(prefix="pm-bench-"))
    base_url = await asyncio.to_thread(embedded_url, workdir)
    url = await fresh_database(base_url, "bench")
    sink = start_sink(postfix)
    results: dict[str, Any] = {"benchmark": "mta", "machine": machine(), "sink": sink.kind,
                               "sessions": SESSIONS, "runs": []}
    try:
        for size in sizes:
            n = messages if size < 50_000 else max(messages // 4, 500)
            baseline_source = smtp_source_rate(sink.port, n, size)
            baseline_aiosmtplib = await aiosmtplib_rate(sink.port, n, size)
            for count in process_counts:
                run_result = await mta_run(url, workdir, sink.port, n, size, count,
                                           args.profile)
                run_result.update({
                    "size_bytes": size,
                    "baseline_smtp_source_mps": baseline_source,
                    "baseline_aiosmtplib_mps": baseline_aiosmtplib,
                })
                results["runs"].append(run_result)
    finally:
        sink.stop()
    table = Table(["size", "procs", "msgs", "MTA msg/s", "smtp-source msg/s", "aiosmtplib msg/s",
                   "MTA/smtp-source", "MTA/aiosmtplib", "p50 s", "p99 s", "CPU s", "peak RSS MB"])
    for r in results["runs"]:
        source = r["baseline_smtp_source_mps"]
        table.add([f"{r['size_bytes'] // 1000} KB", r["processes"], r["messages"],
                   r["messages_per_second"], source, r["baseline_aiosmtplib_mps"],
                   r["messages_per_second"] / source if source else None,
                   r["messages_per_second"] / r["baseline_aiosmtplib_mps"],
                   r["latency_p50_s"], r["latency_p99_s"], r["cpu_seconds"], r["peak_rss_mb"]])
    print(table.render())
    write_json("mta", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks mta")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="sample each MTA with py-spy into results/mta-profile-N.txt")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
