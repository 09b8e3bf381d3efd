"""MTA end to end: messages queued in Postgres, delivered over loopback to an SMTP sink.

Every message is personalised, has an html body with tracked links and an open pixel, and
is DKIM signed (rsa-2048) for bench.test, a sending domain registered the way an operator
does (`mta.domains.add_domain`). Before the measured runs, a few messages go through the
same MTA configuration to the project's sink, which keeps one: its signature must verify
with dkimpy against the published record and its links must point at the tracker, or the
benchmark stops; the measured runs must log no "sending unsigned" warning either.

Baselines measured in the same run, on the same sink, with the same message size on the
wire and session count: Postfix's `smtp-source` (the practical limit of this machine) and a
bare aiosmtplib loop (the floor any Python sender pays). The MTA's figure is read against
them.

`--smart`: the project's sink answers a share of transactions 4xx (deferred, retried after
`retry_base_seconds`, set low so retries come back within the run) and 5xx (bounced); the
run lasts until every message is final, and is read against the same MTA sending to the
same sink accepting everything. The full run includes it; `--smart` runs it alone.

`--processes 1,auto` (the default of a full run): the counts to compare in the same run; a
count above 1, or "auto" (one per core of this machine), runs one `penguinmails mta
--processes N` supervisor and its workers, as a unit would.

`--shaping`: the cost of shared shaping state. The same 5 KB run, alternated twice, with
per-domain rules only (connection slots per domain, no rate: no shaping state touched per
message) and with a shaping file whose site and provider levels both cap connections and
carry a rate too high to hold anything back: every message then reserves its place at two
rated levels in Postgres and every connection holds three slots. Read the msg/s ratio.

    python -m benchmarks mta [--quick] [--smart] [--shaping] [--messages N] [--processes 1,auto]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import email
import email.policy
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import dkim as dkimpy
import orjson
import psutil
import uvloop
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key

from benchmarks.compose import rows as compose_rows
from benchmarks.report import Table, machine, write_json
from mta import dkim
from mta.client import SMTPClient, Timeouts
from mta.compose import render_signed
from mta.domains import add_domain
from mta.worker import PRESENCE_SECONDS
from penguinmails.config import Settings, cores
from penguinmails.database import connect
from penguinmails.links import Links
from penguinmails.messages import Draft, enqueue, ensure_tenant, tracking_settings
from penguinmails.migrations import migrate
from penguinmails.tokens import LinkSigner
from penguinmails.verp import Verp

SESSIONS = 10  # the MTA's default per-domain connection cap; the baselines use the same
DOMAIN = "sink.test"
FROM_DOMAIN = "bench.test"
TENANT = "bench"
SECRET_KEYS = ["bench-key"]
TRACKER_URL = "http://127.0.0.1:8081"
LINKS = 5
SOFT_SHARE, HARD_SHARE = 0.05, 0.02
RETRY_BASE_SECONDS = 0.5
RUN_TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_database(prefix: str) -> tuple[Path, str]:
    """A throwaway embedded Postgres: (work directory, admin URL); both removed at exit."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, workdir, True)  # runs after pgserver's own stop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR
        import pgserver

        server = pgserver.get_server(workdir / "postgres", cleanup_mode="delete")
    return workdir, str(server.get_uri())


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


def bench_settings(url: str, workdir: Path) -> Settings:
    """What the benchmark's own database calls use: the MTA processes' secret keys."""
    return Settings.model_validate(
        {
            "database": {"url": url},
            "paths": {"data_dir": str(workdir)},
            "security": {"secret_keys": SECRET_KEYS},
            "tracker": {"base_url": TRACKER_URL},
        }
    )


@dataclass
class Sink:
    port: int
    process: subprocess.Popen[bytes]
    kind: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def ensure_postfix_tools(install: bool) -> bool:
    """smtp-sink/smtp-source from Debian's postfix package, installed if missing and possible."""
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return True
    if install and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postfix"],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
    return bool(shutil.which("smtp-sink") and shutil.which("smtp-source"))


def start_sink(
    postfix: bool, soft: float = 0.0, hard: float = 0.0, capture: Path | None = None
) -> Sink:
    port = free_port()
    if postfix:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            ["smtp-sink", *user, "-c", f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kind = "postfix smtp-sink"
    else:
        argv = [sys.executable, "-m", "benchmarks.sink", str(port), str(soft), str(hard)]
        if capture is not None:
            argv.append(str(capture))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "penguinmails fast sink"
        if soft or hard:
            kind += f" ({soft:.0%} 4xx, {hard:.0%} 5xx)"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Sink(port, proc, kind)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("sink did not start")


def html_of(size: int) -> str:
    """An html body for a message of about `size` bytes on the wire: a logo, personalised
    paragraphs and LINKS links. The composer adds a text/plain alternative (about as long as
    the html's text) and ~1.2 KB of headers and signature, so the html gets under half."""
    # A logo, as a newsletter has: a short html without an image of its own gets no open
    # pixel (penguinmails.html_text.pixel_left_out), and this benchmark's messages are tracked.
    head = (
        "<!doctype html><html><body>"
        f'<p><img src="https://{FROM_DOMAIN}/logo.png" alt="Bench" width="120" height="40"></p>'
        "<p>Hello {{name}},</p>\n"
    )
    links = "".join(
        f'<p><a href="https://{FROM_DOMAIN}/offer/{i}?utm_source=bench">Offer {i + 1}</a></p>\n'
        for i in range(LINKS)
    )
    tail = "</body></html>\n"
    para = "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, {{name}}.</p>\n"
    budget = int((size - 1200) / 2.05)
    filler = max(budget - len(head) - len(links) - len(tail), 0)
    return head + para * (filler // len(para)) + links + tail


def draft_of(messages: int, size: int) -> Draft:
    return Draft(
        from_email=f"news@{FROM_DOMAIN}",
        subject="Hello {{name}}",
        recipients=[f"user{i}@{DOMAIN}" for i in range(messages)],
        html=html_of(size),
        personalization=[{"name": f"User {i}"} for i in range(messages)],
        settings={"track_opens": True, "track_clicks": True},
    )


def smtp_source_rate(port: int, messages: int, size: int) -> float | None:
    if not shutil.which("smtp-source"):
        return None
    start = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(SESSIONS),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-c",
            "-f",
            f"bench@{FROM_DOMAIN}",
            "-t",
            f"rcpt@{DOMAIN}",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=600,
    )
    return messages / (time.perf_counter() - start)


async def aiosmtplib_rate(port: int, messages: int, size: int) -> float:
    payload = (
        f"From: bench@{FROM_DOMAIN}\r\nTo: rcpt@{DOMAIN}\r\nSubject: bench\r\n\r\n"
        + "x" * (size - 2)
        + "\r\n"
    ).encode()
    per_session = messages // SESSIONS

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for _ in range(per_session):
            await client.sendmail(f"bench@{FROM_DOMAIN}", [f"rcpt@{DOMAIN}"], payload)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(SESSIONS)))
    return per_session * SESSIONS / (time.perf_counter() - start)


def parts_cpu(port: int, size: int, messages: int) -> dict[str, float]:
    """CPU ms a message of the MTA's parts, each alone in this process, at this size and on
    this sink: the bare RSA-2048 signature of a digest (the floor), composing and signing a
    queued row as the MTA does (tracked, personalised), and the delivery client pipelining
    pre-built messages over SESSIONS connections on uvloop, as the MTA runs it. Their sum is
    what a delivery costs before the worker's own part: the claim, shaping, the task, the
    outcome's write."""
    page = html_of(size)
    # Queued as enqueue() queues a draft: the pixel decided once, from the template.
    settings = tracking_settings({"track_opens": True, "track_clicks": True}, page)
    rows = [
        dict(
            row,
            subject="Hello {{name}}",
            html_body=page,
            headers={},
            personalization={"name": f"User {i}"},
            settings=settings,
        )
        for i, row in enumerate(compose_rows("", 200))
    ]
    links = Links(LinkSigner([b"parts-server-key"]), "https://track.bench.test")
    verp = Verp([b"parts-server-key"], "bounces.bench.test")
    der, _ = dkim.generate(dkim.RSA)
    key = dkim.load_key(FROM_DOMAIN, "rsa", dkim.RSA, der)
    private = key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    digest = hashlib.sha256(b"the signed header block").digest()
    count = min(messages, 4000)

    def per_message(work: Callable[[int], object]) -> float:
        start = time.thread_time()
        for i in range(count):
            work(i)
        return (time.thread_time() - start) / count * 1000

    floor = per_message(
        lambda _: private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    )
    # Each row its own copy of the body, as the database driver returns them.
    signed = per_message(
        lambda i: render_signed(
            dict(rows[i % 200], html_body="".join([rows[i % 200]["html_body"], ""])),
            [key],
            links=links,
            verp=verp,
        )
    )
    payload = render_signed(rows[0], [key], links=links, verp=verp)[1]
    per_session = count // SESSIONS
    timeouts = Timeouts(connect=10, command=30, data=60)

    async def session() -> None:
        client = await SMTPClient.connect(
            "127.0.0.1", port, local_hostname="parts.bench.test", timeouts=timeouts
        )
        last = None
        for _ in range(per_session):
            # As the MTA does: the next transaction goes out behind the last one's end of
            # data, whose reply is read after.
            submitted = await client.submit(f"b@{FROM_DOMAIN}", [f"rcpt@{DOMAIN}"], payload)
            if last is not None:
                await last.delivery()
            last = submitted
        if last is not None:
            await last.delivery()
        await client.quit()

    async def sessions() -> float:
        start = time.thread_time()
        await asyncio.gather(*(session() for _ in range(SESSIONS)))
        return (time.thread_time() - start) / (per_session * SESSIONS) * 1000

    client = uvloop.run(sessions())
    return {"rsa_sign_floor": floor, "compose_sign": signed, "client": client}


class Sampler:
    """CPU seconds and peak RSS of a set of processes and their children (a supervisor's
    workers), sampled while they run."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = []
        for pid in pids:
            try:
                self.procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:  # a database backend that has just exited
                continue
        self.peak_rss = 0
        self.cpu = 0.0

    def _with_children(self) -> list[psutil.Process]:
        found = list(self.procs)
        for proc in self.procs:
            try:
                found += proc.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        return found

    def sample(self) -> None:
        rss, cpu = 0, 0.0
        for proc in self._with_children():
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu = max(self.cpu, cpu)


def postgres_pids(workdir: Path) -> list[int]:
    """The embedded server's postmaster and its current backends (for CPU sampling)."""
    try:
        postmaster = int((workdir / "postgres" / "postmaster.pid").read_text().split()[0])
        return [postmaster, *(c.pid for c in psutil.Process(postmaster).children())]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def postgres_cpu(workdir: Path) -> dict[int, float]:
    """CPU seconds so far of each embedded-server process; diff two readings per pid, so
    backends started in between (a pool growing) count from zero."""
    seconds = {}
    for pid in postgres_pids(workdir):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class Bench:
    """What every MTA run shares: the database, the tenant, the signing domain."""

    url: str
    workdir: Path
    tenant: int
    dkim_selector: str
    dkim_record: str  # the TXT value a resolver would return


async def prepare(url: str, workdir: Path) -> Bench:
    conn = await connect(url)
    try:
        tenant = await ensure_tenant(conn, TENANT)
        records = await add_domain(
            conn, bench_settings(url, workdir), FROM_DOMAIN, tenant=TENANT, algorithm="rsa"
        )
    finally:
        await conn.close()
    name, _, rest = records[0].partition(" IN TXT ")
    value = "".join(re.findall(r'"([^"]*)"', rest))
    return Bench(url, workdir, tenant, name.split("._domainkey.")[0], value)


def mta_env(bench: Bench, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The MTA processes' environment. The per-domain connection cap is held across
    processes (slot rows in Postgres), so SESSIONS is the total whatever the process count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_DATABASE__URL": bench.url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(bench.workdir),
            "PENGUINMAILS_MTA__ROUTES": f'{{"{DOMAIN}": "127.0.0.1:{port}"}}',
            "PENGUINMAILS_MTA__DEFAULT_THROTTLE__MAX_CONNECTIONS": str(SESSIONS),
            "PENGUINMAILS_MTA__DEFAULT_THROTTLE__MESSAGES_PER_CONNECTION": "1000",
            "PENGUINMAILS_MTA__METRICS_LISTEN": "",  # not read here
            "PENGUINMAILS_SECURITY__SECRET_KEYS": orjson.dumps(SECRET_KEYS).decode(),
            "PENGUINMAILS_TRACKER__BASE_URL": TRACKER_URL,
            "PENGUINMAILS_LOGGING__LEVEL": "WARNING",
            **extra,
        }
    )
    return env


async def mta_run(
    bench: Bench,
    port: int,
    draft: Draft,
    processes: int | str,
    *,
    final: tuple[str, ...] = ("sent", "bounced", "failed", "deferred"),
    extra_env: dict[str, str] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Start an MTA of `processes` workers, queue `draft`, wait until every message has a
    `final` status."""
    conn = await connect(bench.url)
    await conn.execute("TRUNCATE messages, events, suppressions RESTART IDENTITY CASCADE")
    env = mta_env(bench, port, extra_env or {})
    logs = [bench.workdir / "mta.log"]
    procs = start_mtas(env, logs, processes)
    database_before = postgres_cpu(bench.workdir)
    try:
        result = await _measure(
            conn, bench.tenant, worker_count(processes), procs, logs, draft, final, profile
        )
        result["processes"] = worker_count(processes)
        result["processes_asked"] = processes
        result["postgres_cpu_seconds"] = cpu_between(database_before, postgres_cpu(bench.workdir))
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
    text = "".join(p.read_text(errors="replace") for p in logs)
    result["unsigned_warnings"] = text.count('"dkim_unsigned"')
    result["mta_errors"] = text.count('"level":"error"')
    if result["unsigned_warnings"]:
        raise RuntimeError("the MTA sent unsigned mail; DKIM signing is not on in this run")
    return result


def worker_count(processes: int | str) -> int:
    return cores() if processes == "auto" else int(processes)


def procs_label(run: dict[str, Any]) -> str:
    """ "1", or "2 (auto)" for one worker per core."""
    return (
        f"{run['processes']} (auto)"
        if run.get("processes_asked") == "auto"
        else str(run["processes"])
    )


def start_mtas(
    env: dict[str, str], logs: list[Path], processes: int | str = 1
) -> list[subprocess.Popen[bytes]]:
    """One `penguinmails mta --processes N` per log file, its stderr (JSON log lines, its
    workers' too) into that file."""
    procs = []
    for log_path in logs:
        with log_path.open("wb") as log_file:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "penguinmails.cli",
                        "mta",
                        "--processes",
                        str(processes),
                    ],
                    env=env,
                    stderr=log_file,
                    stdout=subprocess.DEVNULL,
                )
            )
    return procs


def _log_tail(logs: list[Path]) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)


async def workers_live(
    conn: Any, workers: int, procs: list[subprocess.Popen[bytes]], logs: list[Path]
) -> None:
    """Wait until every worker has said it is alive in the database: each then takes its
    share of the connection cap from the start, rather than the first one up taking all."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = await conn.fetchval(
            "SELECT count(*) FROM mta_processes WHERE seen_at > now() - interval '6 seconds'"
        )
        if live >= workers:
            await asyncio.sleep(PRESENCE_SECONDS)  # one more beat: each has counted the rest
            return
        if any(p.poll() is not None for p in procs):
            break
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{workers} MTA workers did not start:\n{_log_tail(logs)}")


async def _measure(
    conn: Any,
    tenant: int,
    workers: int,
    procs: list[subprocess.Popen[bytes]],
    logs: list[Path],
    draft: Draft,
    final: tuple[str, ...],
    profile: bool,
) -> dict[str, Any]:
    messages = len(draft.recipients)
    sampler = Sampler([p.pid for p in procs])
    spies = start_profilers(procs) if profile else []
    await workers_live(conn, workers, procs, logs)
    await asyncio.sleep(1.5)  # let the workers start and go idle on LISTEN
    sampler.sample()
    cpu_before = sampler.cpu
    start = time.time()
    await enqueue(conn, tenant, draft)
    enqueued = time.time() - start
    while True:
        await asyncio.sleep(0.2)
        sampler.sample()
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"an MTA process exited ({dead}):\n{_log_tail(logs)}")
        if time.time() - start > RUN_TIMEOUT:
            raise RuntimeError(f"messages not final after {RUN_TIMEOUT:g}s:\n{_log_tail(logs)}")
        done = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE status = ANY($1::text[])", list(final)
        )
        if done >= messages:
            break
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    rows = await conn.fetch(
        "SELECT status, extract(epoch FROM updated_at - created_at)::float8 AS latency, "
        "extract(epoch FROM updated_at)::float8 AS at, attempts FROM messages"
    )
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    events = {
        r["type"]: r["n"]
        for r in await conn.fetch("SELECT type, count(*) AS n FROM events GROUP BY type")
    }
    # When every message had its first outcome: the MTA's pace with failures in the mix,
    # apart from the retry schedule's tail.
    first_pass = await conn.fetchval(
        "SELECT extract(epoch FROM max(first))::float8 FROM (SELECT min(created_at) AS first"
        " FROM events WHERE type IN ('email.delivered', 'email.deferred', 'email.bounced')"
        " GROUP BY message_id) f"
    )
    sent = sorted(r["latency"] for r in rows if r["status"] == "sent")
    finished = sorted(r["latency"] for r in rows)
    elapsed = max(r["at"] for r in rows) - start
    return {
        "messages": messages,
        "sent": statuses.get("sent", 0),
        "statuses": statuses,
        "events": events,
        "attempts": sum(r["attempts"] for r in rows),
        "seconds": elapsed,
        "enqueue_seconds": enqueued,
        "messages_per_second": len(rows) / elapsed,
        "sent_per_second": len(sent) / elapsed,
        "attempts_per_second": sum(r["attempts"] for r in rows) / elapsed,
        "first_pass_per_second": messages / (first_pass - start) if first_pass else None,
        "latency_p50_s": _percentile(sent, 0.5),
        "latency_p99_s": _percentile(sent, 0.99),
        "final_p50_s": _percentile(finished, 0.5),
        "final_p99_s": _percentile(finished, 0.99),
        "cpu_seconds": sampler.cpu - cpu_before,
        "peak_rss_mb": sampler.peak_rss / 2**20,
    }


def start_profilers(procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    # The virtualenv's own py-spy, when the benchmark runs as .venv/bin/python without the
    # venv on PATH.
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("--profile: py-spy not found (pip install py-spy); running without a profile")
        return []
    from benchmarks.report import RESULTS

    RESULTS.mkdir(exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(p.pid),
                "--format",
                "raw",
                "-r",
                "250",
                "-o",
                str(RESULTS / f"mta-profile-{i}.txt"),
                "--subprocesses",  # a supervisor's workers
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, p in enumerate(procs)
    ]


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    if share == 0.5:
        return statistics.median(values)
    return values[min(len(values) - 1, max(int(len(values) * share) - 1, 0))]


# -- what is really sent ----------------------------------------------------------------------


async def check_message(bench: Bench, size: int) -> dict[str, Any]:
    """A few messages through the same MTA setup to a sink that keeps one; check that one.

    Returns its size on the wire (the baselines send the same) and what was verified.
    """
    capture = bench.workdir / f"captured-{size}.eml"
    capture.unlink(missing_ok=True)
    sink = start_sink(False, capture=capture)
    try:
        await mta_run(bench, sink.port, draft_of(3, size), 1)
    finally:
        sink.stop()
    if not capture.exists():
        raise RuntimeError("the check run's sink kept no message")
    raw = capture.read_bytes()
    return {"wire_bytes": len(raw), **verify_message(raw, bench)}


def verify_message(raw: bytes, bench: Bench) -> dict[str, Any]:
    """DKIM verifies with dkimpy against the published record; links and pixel are tracked."""
    dns_name = f"{bench.dkim_selector}._domainkey.{FROM_DOMAIN}.".encode()
    record = bench.dkim_record.encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == dns_name.rstrip(b".") else None

    signature = email.message_from_bytes(raw, policy=email.policy.default)
    header = str(signature.get("DKIM-Signature", ""))
    tags = dict(
        part.strip().split("=", 1) for part in re.sub(r"\s+", "", header).split(";") if "=" in part
    )
    try:
        verified = bool(dkimpy.DKIM(raw).verify(dnsfunc=dnsfunc))
    except dkimpy.DKIMException:
        verified = False
    html = ""
    for part in signature.walk():
        if part.get_content_type() == "text/html":
            html = str(part.get_content())
    opens = html.count(f"{TRACKER_URL}/o/")
    clicks = html.count(f"{TRACKER_URL}/c/")
    checks = {
        "dkim_algorithm": tags.get("a"),
        "dkim_key_bits": dkim_bits(bench.dkim_record),
        "dkim_verified": verified,
        "open_pixels": opens,
        "tracked_links": clicks,
    }
    if not verified or tags.get("a") != "rsa-sha256" or not opens or clicks < LINKS:
        raise RuntimeError(f"the MTA's message is not what this benchmark claims: {checks}")
    return checks


def dkim_bits(record: str) -> int:
    public = re.search(r"p=([A-Za-z0-9+/=]+)", record)
    assert public is not None
    key = load_der_public_key(base64.b64decode(public.group(1)))
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else 0


# -- the runs ---------------------------------------------------------------------------------


async def plain_runs(
    bench: Bench, args: argparse.Namespace, messages: int, checked: dict[int, dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    sizes = [5_000] if args.quick else [5_000, 100_000]
    process_counts = args.processes or ([1] if args.quick else [1, "auto"])
    # --quick (CI) never installs anything: it falls back to the project's sink.
    postfix = ensure_postfix_tools(install=not args.quick)
    if not postfix:
        print(
            "smtp-sink/smtp-source not installed: the project's sink stands in for Postfix's,"
            " and the smtp-source baseline is n/a"
        )
    sink = start_sink(postfix)
    runs: list[dict[str, Any]] = []
    try:
        for size in sizes:
            n = messages if size < 50_000 else max(messages // 4, 500)
            check = checked.setdefault(size, await check_message(bench, size))
            wire = check["wire_bytes"]
            baseline_source = smtp_source_rate(sink.port, n, wire)
            baseline_aiosmtplib = await aiosmtplib_rate(sink.port, n, wire)
            # In a thread of its own: the client runs on its own uvloop, as in the MTA.
            parts = await asyncio.to_thread(parts_cpu, sink.port, size, n)
            for count in process_counts:
                result = await mta_run(
                    bench, sink.port, draft_of(n, size), count, profile=args.profile
                )
                result.update(
                    {
                        "size_bytes": size,
                        "wire_bytes": wire,
                        "baseline_smtp_source_mps": baseline_source,
                        "baseline_aiosmtplib_mps": baseline_aiosmtplib,
                        "parts_cpu_ms": parts,
                    }
                )
                runs.append(result)
    finally:
        sink.stop()
    return sink.kind, runs


async def smart_runs(
    bench: Bench, args: argparse.Namespace, messages: int, checked: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    size = 5_000
    process_counts = args.processes or ([1] if args.quick else [1, "auto"])
    checked.setdefault(size, await check_message(bench, size))
    env = {
        "PENGUINMAILS_MTA__RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
        # A run of 4xx backs the domain off; keep that pause short so the run stays bounded.
        "PENGUINMAILS_MTA__DEFAULT_THROTTLE__BACKOFF_SECONDS": "2",
    }
    final = ("sent", "bounced", "failed")
    runs = []
    for count in process_counts:
        pair = {}
        for label, soft, hard in (("accept all", 0.0, 0.0), ("smart", args.soft, args.hard)):
            sink = start_sink(False, soft, hard)
            try:
                pair[label] = await mta_run(
                    bench, sink.port, draft_of(messages, size), count, final=final, extra_env=env
                )
            finally:
                sink.stop()
            pair[label]["sink"] = sink.kind
        runs.append(
            {
                "processes": worker_count(count),
                "processes_asked": count,
                "size_bytes": size,
                "soft_share": args.soft,
                "hard_share": args.hard,
                "retry_base_seconds": RETRY_BASE_SECONDS,
                "smart": pair["smart"],
                "baseline_accept_all": pair["accept all"],
            }
        )
    return runs


SHAPING_RULES = f"""
[site]
max_connections = {SESSIONS}
rate_per_second = 1000000
burst = 1000000

[providers.bench]
domains = ["{DOMAIN}"]
max_connections = {SESSIONS}
rate_per_second = 1000000
burst = 1000000
"""


async def shaping_runs(
    bench: Bench, args: argparse.Namespace, messages: int, checked: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    size = 5_000
    checked.setdefault(size, await check_message(bench, size))
    rules = bench.workdir / "shaping.toml"
    rules.write_text(SHAPING_RULES)
    postfix = ensure_postfix_tools(install=not args.quick)
    sink = start_sink(postfix)
    modes = {
        "per-domain rules": {},
        "shared shaping": {"PENGUINMAILS_MTA__SHAPING_FILE": str(rules)},
    }
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(2):  # alternated, so drift on a busy machine hits both alike
            for label, env in modes.items():
                result = await mta_run(bench, sink.port, draft_of(messages, size), 1, extra_env=env)
                result.update({"mode": label, "sink": sink.kind, "size_bytes": size})
                runs.append(result)
    finally:
        sink.stop()
    return runs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    messages = args.messages or (2000 if args.quick else 20000)
    workdir, base_url = await asyncio.to_thread(embedded_database, "pm-bench-mta-")
    url = await fresh_database(base_url, "bench")
    bench = await prepare(url, workdir)
    checked: dict[int, dict[str, Any]] = {}
    results: dict[str, Any] = {
        "benchmark": "mta",
        "quick": args.quick,
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "sessions": SESSIONS,
        "dkim": {"domain": FROM_DOMAIN, "selector": bench.dkim_selector},
        "runs": [],
        "smart_runs": [],
        "shaping_runs": [],
    }
    if args.shaping:
        results["shaping_runs"] = await shaping_runs(bench, args, messages, checked)
        results["checked_messages"] = {str(k): v for k, v in checked.items()}
        results["load_average_after"] = os.getloadavg()
        return results
    if not args.smart_only:
        results["sink"], results["runs"] = await plain_runs(bench, args, messages, checked)
    if args.smart_only or not args.quick:
        smart_messages = args.messages or (2000 if args.quick else 10000)
        results["smart_runs"] = await smart_runs(bench, args, smart_messages, checked)
    results["checked_messages"] = {str(k): v for k, v in checked.items()}
    results["load_average_after"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> None:
    for size, check in results["checked_messages"].items():
        print(
            f"checked {int(size) // 1000} KB: {check['wire_bytes']:,} bytes on the wire, "
            f"DKIM {check['dkim_algorithm']} {check['dkim_key_bits']}-bit verified "
            f"with dkimpy: {check['dkim_verified']}, open pixel: {check['open_pixels']}, "
            f"tracked links: {check['tracked_links']}"
        )
    if results["runs"]:
        table = Table(
            [
                "size",
                "wire B",
                "procs",
                "msgs",
                "MTA msg/s",
                "smtp-source msg/s",
                "aiosmtplib msg/s",
                "MTA/smtp-source",
                "MTA/aiosmtplib",
                "enqueue ms",
                "p50 s",
                "p99 s",
                "CPU s",
                "PG CPU s",
                "peak RSS MB",
            ]
        )
        for r in results["runs"]:
            source = r["baseline_smtp_source_mps"]
            table.add(
                [
                    f"{r['size_bytes'] // 1000} KB",
                    r["wire_bytes"],
                    procs_label(r),
                    r["messages"],
                    r["messages_per_second"],
                    source,
                    r["baseline_aiosmtplib_mps"],
                    r["messages_per_second"] / source if source else None,
                    r["messages_per_second"] / r["baseline_aiosmtplib_mps"],
                    r["enqueue_seconds"] * 1000,
                    r["latency_p50_s"],
                    r["latency_p99_s"],
                    r["cpu_seconds"],
                    r["postgres_cpu_seconds"],
                    r["peak_rss_mb"],
                ]
            )
        print(
            f"\nMTA to {results['sink']}, {results['sessions']} sessions, "
            "DKIM rsa-2048, opens and clicks tracked"
        )
        print(table.render())
        parts = Table(
            [
                "size",
                "procs",
                "RSA sign",
                "compose+sign",
                "client alone",
                "parts",
                "MTA",
                "MTA - parts",
                "MTA/floor",
            ]
        )
        for r in results["runs"]:
            if "parts_cpu_ms" not in r:
                continue
            p = r["parts_cpu_ms"]
            mta = r["cpu_seconds"] / r["messages"] * 1000
            both = p["compose_sign"] + p["client"]
            parts.add(
                [
                    f"{r['size_bytes'] // 1000} KB",
                    procs_label(r),
                    p["rsa_sign_floor"],
                    p["compose_sign"],
                    p["client"],
                    both,
                    mta,
                    mta - both,
                    mta / p["rsa_sign_floor"],
                ]
            )
        print(
            "\nCPU ms a message: the MTA's parts alone in this run (compose+sign includes the"
            " RSA sign), against the MTA's own (its worker processes, all of them)"
        )
        print(parts.render())
    if results["smart_runs"]:
        table = Table(
            [
                "procs",
                "sink",
                "msgs",
                "final msg/s",
                "final vs accept-all",
                "first pass msg/s",
                "first pass vs accept-all",
                "sent",
                "bounced",
                "failed",
                "deferrals",
                "attempts",
                "final p50 s",
                "final p99 s",
                "CPU s",
            ]
        )
        for r in results["smart_runs"]:
            base = r["baseline_accept_all"]
            for label, m in (("accept all", r["baseline_accept_all"]), ("smart", r["smart"])):
                table.add(
                    [
                        procs_label(r),
                        label,
                        m["messages"],
                        m["messages_per_second"],
                        m["messages_per_second"] / base["messages_per_second"],
                        m["first_pass_per_second"],
                        m["first_pass_per_second"] / base["first_pass_per_second"],
                        m["statuses"].get("sent", 0),
                        m["statuses"].get("bounced", 0),
                        m["statuses"].get("failed", 0),
                        m["events"].get("email.deferred", 0),
                        m["attempts"],
                        m["final_p50_s"],
                        m["final_p99_s"],
                        m["cpu_seconds"],
                    ]
                )
        first = results["smart_runs"][0]
        print(
            f"\nSmart sink: {first['soft_share']:.0%} 4xx, {first['hard_share']:.0%} 5xx, "
            f"retry base {first['retry_base_seconds']:g}s; every message final "
            "(sent, bounced or failed) before the clock stops"
        )
        print(table.render())


def report_shaping(results: dict[str, Any]) -> None:
    runs = results["shaping_runs"]
    if not runs:
        return
    table = Table(["mode", "msgs", "MTA msg/s", "vs per-domain", "CPU s", "PG CPU s"])
    base = statistics.fmean(
        r["messages_per_second"] for r in runs if r["mode"] == "per-domain rules"
    )
    for r in runs:
        table.add(
            [
                r["mode"],
                r["messages"],
                r["messages_per_second"],
                r["messages_per_second"] / base,
                r["cpu_seconds"],
                r["postgres_cpu_seconds"],
            ]
        )
    print(
        f"\nShared shaping vs per-domain rules: one MTA process to {runs[0]['sink']}, "
        f"{SESSIONS} sessions, 5 KB, alternated"
    )
    print(table.render())


def _process_counts(text: str) -> list[int | str]:
    counts: list[int | str] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "auto":
            counts.append(part)
        elif part.isdigit() and int(part) >= 1:
            counts.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a process count: {part!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks mta",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--smart",
        dest="smart_only",
        action="store_true",
        help="only the smart-sink runs (4xx/5xx in the mix)",
    )
    parser.add_argument(
        "--shaping",
        action="store_true",
        help="only the shared-shaping comparison (site and provider levels, rated)",
    )
    parser.add_argument("--soft", type=float, default=SOFT_SHARE, help="share answered 4xx")
    parser.add_argument("--hard", type=float, default=HARD_SHARE, help="share answered 5xx")
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument(
        "--processes",
        type=_process_counts,
        default=None,
        help='MTA process counts to compare, e.g. "1,auto" (full default) or "1,2"',
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each MTA with py-spy into results/mta-profile-N.txt",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    report(results)
    report_shaping(results)
    name = "mta-shaping" if args.shaping else "mta-smart" if args.smart_only else "mta"
    write_json(name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
