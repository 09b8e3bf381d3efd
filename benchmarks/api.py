"""API ingest: recipients per second through send-bulk, and a single send's latency under load.

The API runs as it does in production, a `penguinmails api` process (uvloop, its own
Postgres pool) on a free loopback port, on an embedded Postgres; the load comes from this
process. A test-mode key (sandbox: nothing would leave the machine) on the enterprise tier,
so the rate limit is not what is measured; every request still pays the limiter's UPSERT.

- Bulk: POST /api/v1/emails/send-bulk with 10,000 personalised recipients per request (the
  API's maximum), one request at a time, for a campaign with html content and tracking on.
  Each 202 means 10,000 committed rows. Baseline in the same run: the same 10,000 rows
  queued by `penguinmails.messages.enqueue` directly on one connection (what the route does
  inside its transaction, without HTTP, JSON and validation).
- Batch: POST /api/v1/emails/batch with 500 different messages per request (the maximum),
  each its own subject, tags and metadata, one request at a time; each 202 means 500
  committed rows in one transaction. Baseline in the same run: the same 500 Drafts queued by
  `enqueue` directly, 500 calls in one transaction on one connection.
- Single send under load: POST /api/v1/emails/send from N concurrent connections (default
  20) for a few seconds, p50/p99 latency and requests/second; every 202 must be a row.
  Baselines in the same run with the same client and concurrency: GET /api/v1/health on the
  same API process (auth-free, one `SELECT 1`), and a bare aiohttp handler in its own
  process (the framework's floor on this machine).

The client is `wrk` (one thread) when installed, else an aiohttp client in this process.

    python -m benchmarks api [--quick] [--requests N] [--seconds S] [--concurrency C]
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

import aiohttp
import orjson

from api.keys import create_key
from benchmarks.mta import (
    Sampler,
    cpu_between,
    embedded_database,
    free_port,
    fresh_database,
    postgres_cpu,
)
from benchmarks.report import Table, machine, write_json
from benchmarks.wrk import run_wrk
from penguinmails.database import connect
from penguinmails.messages import Address, Draft, enqueue, ensure_tenant

PREFIX = "/api/v1"
TENANT = "bench"
BULK_RECIPIENTS = 10_000
BATCH_MESSAGES = 500
SUBJECT = "Hello {{name}}"
HTML = (
    "<p>Hi {{name}},</p>"
    + "<p>We help teams like {{company}} ship faster; here is how.</p>" * 20
    + "".join(f'<p><a href="https://bench.test/offer/{i}">Offer {i}</a></p>' for i in range(5))
)

_WRK_SCRIPT = """
wrk.method = "%(method)s"
%(body)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"errors":%%d,"non2xx":%%d,"seconds":%%f,"p50_ms":%%f,"p99_ms":%%f}\\n',
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


# -- servers ----------------------------------------------------------------------------------


def start_api(url: str, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    env.update(
        {
            "PENGUINMAILS_DATABASE__URL": url,
            "PENGUINMAILS_PATHS__DATA_DIR": str(workdir),
            "PENGUINMAILS_API__LISTEN": f"127.0.0.1:{port}",
            "PENGUINMAILS_API__METRICS_LISTEN": "",  # no port clash with a running API
            "PENGUINMAILS_SECURITY__SECRET_KEYS": '["bench-key"]',
            "PENGUINMAILS_LOGGING__LEVEL": "WARNING",
        }
    )
    with (workdir / "api.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "penguinmails.cli", "api"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def start_bare(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.api", "--bare-server", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bare_server(port: int) -> None:
    """The baseline: an aiohttp app answering a small JSON body, nothing else."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/", ok)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- load -------------------------------------------------------------------------------------


def _wrk(
    url: str,
    workdir: Path,
    name: str,
    *,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    body_line = ""
    if body is not None:
        body_file = workdir / f"{name}.json"
        body_file.write_bytes(body)
        body_line = f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()'
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = workdir / f"{name}.lua"
    script.write_text(_WRK_SCRIPT % {"method": method, "body": body_line, "headers": header_lines})
    result = run_wrk(url, script, seconds, connections)
    result["client"] = "wrk -t1"
    return result


async def _aiohttp_load(
    url: str,
    *,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "non2xx": 0}
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.request(method, url, data=body, headers=headers) as response:
                    await response.read()
                    counts["non2xx" if response.status >= 300 else "ok"] += 1
            except aiohttp.ClientError:
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": counts["ok"] + counts["non2xx"],
        "errors": counts["errors"],
        "non2xx": counts["non2xx"],
        "seconds": elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
        "client": "aiohttp (in the benchmark process)",
    }


async def load(
    url: str,
    workdir: Path,
    name: str,
    server: subprocess.Popen[bytes],
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = "application/json"
    sampler = Sampler([server.pid])
    sampler.sample()
    cpu, database_before = sampler.cpu, postgres_cpu(workdir)
    if shutil.which("wrk"):
        result = await asyncio.to_thread(
            _wrk,
            url,
            workdir,
            name,
            method=method,
            body=body,
            headers=headers,
            seconds=seconds,
            connections=connections,
        )
    else:
        result = await _aiohttp_load(
            url, method=method, body=body, headers=headers, seconds=seconds, connections=connections
        )
    sampler.sample()
    database_cpu = cpu_between(database_before, postgres_cpu(workdir))
    result["requests_per_second"] = result["requests"] / result["seconds"]
    result["server_cpu_percent"] = (sampler.cpu - cpu) / result["seconds"] * 100
    result["postgres_cpu_percent"] = database_cpu / result["seconds"] * 100
    return result


# -- the benchmark ----------------------------------------------------------------------------


def bulk_body(campaign_id: str, batch: int) -> bytes:
    return orjson.dumps(
        {
            "campaign_id": campaign_id,
            "recipients": [
                {
                    "email": f"r{batch}-{i}@sink.test",
                    "personalization": {"name": f"User {i}", "company": f"Company {i % 97}"},
                }
                for i in range(BULK_RECIPIENTS)
            ],
        }
    )


async def bulk(
    session: aiohttp.ClientSession, base: str, auth: dict[str, str], requests: int
) -> dict[str, Any]:
    async with session.post(
        f"{base}{PREFIX}/campaigns",
        json={
            "name": "bench",
            "subject": SUBJECT,
            "from": {"email": "news@bench.test"},
            "content": {"html": HTML},
        },
        headers=auth,
    ) as response:
        created = await response.json()
        if response.status != 201:
            raise RuntimeError(f"creating the campaign failed: {response.status} {created}")
    campaign_id = created["data"]["id"]
    seconds: list[float] = []
    queued = 0
    for n in range(requests):
        body = bulk_body(campaign_id, n)
        started = time.perf_counter()
        async with session.post(
            f"{base}{PREFIX}/emails/send-bulk",
            data=body,
            headers={**auth, "Content-Type": "application/json"},
        ) as response:
            answer = await response.read()
            if response.status != 202:
                raise RuntimeError(f"send-bulk answered {response.status}: {answer[:500]!r}")
        seconds.append(time.perf_counter() - started)
        queued += orjson.loads(answer)["data"]["queued"]
    return {
        "requests": requests,
        "recipients_per_request": BULK_RECIPIENTS,
        "request_bytes": len(body),
        "queued": queued,
        "request_seconds_p50": statistics.median(seconds),
        "request_seconds_max": max(seconds),
        "recipients_per_second": queued / sum(seconds),
    }


async def enqueue_baseline(url: str, requests: int) -> dict[str, Any]:
    """The same rows through penguinmails.messages.enqueue on one connection, one transaction
    per 10,000, as the route does without HTTP, JSON and validation around it."""
    conn = await connect(url)
    try:
        tenant = await ensure_tenant(conn, TENANT)
        seconds: list[float] = []
        for n in range(requests):
            draft = Draft(
                from_email="news@bench.test",
                subject=SUBJECT,
                html=HTML,
                recipients=[f"d{n}-{i}@sink.test" for i in range(BULK_RECIPIENTS)],
                personalization=[
                    {"name": f"User {i}", "company": f"Company {i % 97}"}
                    for i in range(BULK_RECIPIENTS)
                ],
                settings={"track_opens": True, "track_clicks": True},
                sandbox=True,
            )
            started = time.perf_counter()
            async with conn.transaction():
                await enqueue(conn, tenant, draft)
            seconds.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return {
        "requests": requests,
        "request_seconds_p50": statistics.median(seconds),
        "recipients_per_second": requests * BULK_RECIPIENTS / sum(seconds),
    }


def batch_item(batch: int, i: int) -> dict[str, Any]:
    return {
        "from": {"email": "news@bench.test"},
        "to": f"b{batch}-{i}@sink.test",
        "subject": f"Order {batch}-{i} is on its way, {{{{name}}}}",
        "content": {"html": HTML},
        "personalization": {"name": f"User {i}", "company": f"Company {i % 97}"},
        "tags": ["order", "shipping"],
        "metadata": {"order": f"{batch}-{i}", "total": i * 1.5},
    }


async def batch(
    session: aiohttp.ClientSession, base: str, auth: dict[str, str], requests: int
) -> dict[str, Any]:
    seconds: list[float] = []
    queued = 0
    body = b""
    for n in range(requests):
        body = orjson.dumps({"messages": [batch_item(n, i) for i in range(BATCH_MESSAGES)]})
        started = time.perf_counter()
        async with session.post(
            f"{base}{PREFIX}/emails/batch",
            data=body,
            headers={**auth, "Content-Type": "application/json"},
        ) as response:
            answer = await response.read()
            if response.status != 202:
                raise RuntimeError(f"batch answered {response.status}: {answer[:500]!r}")
        seconds.append(time.perf_counter() - started)
        queued += len(orjson.loads(answer)["data"]["data"])
    return {
        "requests": requests,
        "messages_per_request": BATCH_MESSAGES,
        "request_bytes": len(body),
        "queued": queued,
        "request_seconds_p50": statistics.median(seconds),
        "messages_per_second": queued / sum(seconds),
    }


async def batch_enqueue_baseline(url: str, requests: int) -> dict[str, Any]:
    """The same 500 messages through enqueue(), one call each, in one transaction."""
    conn = await connect(url)
    try:
        tenant = await ensure_tenant(conn, TENANT, mode="test")
        seconds: list[float] = []
        for n in range(requests):
            drafts = [
                Draft(
                    from_email="news@bench.test",
                    subject=item["subject"],
                    html=HTML,
                    recipients=[item["to"].replace("@", "-direct@")],
                    personalization=[item["personalization"]],
                    to_header=[Address(item["to"].replace("@", "-direct@"))],
                    tags=item["tags"],
                    metadata=item["metadata"],
                    sandbox=True,
                )
                for item in (batch_item(n, i) for i in range(BATCH_MESSAGES))
            ]
            started = time.perf_counter()
            async with conn.transaction():
                for draft in drafts:
                    await enqueue(conn, tenant, draft)
            seconds.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return {
        "requests": requests,
        "request_seconds_p50": statistics.median(seconds),
        "messages_per_second": requests * BATCH_MESSAGES / sum(seconds),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    requests = args.requests or (2 if args.quick else 5)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    workdir, base_url = await asyncio.to_thread(embedded_database, "pm-bench-api-")
    url = await fresh_database(base_url, "bench_api")
    conn = await connect(url)
    try:
        key = await create_key(conn, tenant=TENANT, tier="enterprise", test=True)
    finally:
        await conn.close()
    auth = {"Authorization": f"Bearer {key}"}
    results: dict[str, Any] = {
        "benchmark": "api",
        "quick": args.quick,
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "concurrency": args.concurrency,
        "seconds_per_phase": seconds,
    }
    api_port, bare_port = free_port(), free_port()
    api = start_api(url, workdir, api_port)
    bare = start_bare(bare_port)
    base = f"http://127.0.0.1:{api_port}"
    try:
        await wait_ready(f"{base}/healthz", api, "penguinmails api")
        await wait_ready(f"http://127.0.0.1:{bare_port}/", bare, "bare aiohttp server")
        async with aiohttp.ClientSession() as session:
            results["bulk"] = await bulk(session, base, auth, requests)
        results["bulk_baseline_enqueue"] = await enqueue_baseline(url, requests)
        batches = args.requests or (3 if args.quick else 10)
        async with aiohttp.ClientSession() as session:
            results["batch"] = await batch(session, base, auth, batches)
        results["batch_baseline_enqueue"] = await batch_enqueue_baseline(url, batches)

        single = orjson.dumps(
            {
                "from": {"email": "news@bench.test"},
                "to": "someone@sink.test",
                "subject": SUBJECT,
                "content": {"html": HTML},
                "personalization": {"name": "Ada", "company": "Analytical Engines"},
            }
        )
        conn = await connect(url)
        try:
            before = await conn.fetchval("SELECT count(*) FROM messages WHERE campaign_id IS NULL")
            phases = results["single"] = {}
            phases["send"] = await load(
                f"{base}{PREFIX}/emails/send",
                workdir,
                "send",
                api,
                method="POST",
                body=single,
                headers=auth,
                seconds=seconds,
                connections=args.concurrency,
            )
            rows = (
                await conn.fetchval("SELECT count(*) FROM messages WHERE campaign_id IS NULL")
                - before
            )
        finally:
            await conn.close()
        ok = phases["send"]["requests"] - phases["send"]["non2xx"]
        # The client stops counting at its deadline with requests in flight; those commit
        # too, so every counted 202 is a row when the rows are at least as many.
        phases["send"]["rows"] = rows
        phases["send"]["every_202_a_row"] = rows >= ok
        phases["health"] = await load(
            f"{base}{PREFIX}/health",
            workdir,
            "health",
            api,
            seconds=seconds,
            connections=args.concurrency,
        )
        phases["bare"] = await load(
            f"http://127.0.0.1:{bare_port}/",
            workdir,
            "bare",
            bare,
            seconds=seconds,
            connections=args.concurrency,
        )
    finally:
        stop(api)
        stop(bare)
    log = (workdir / "api.log").read_text(errors="replace")
    results["api_log_errors"] = log.count('"level":"error"')
    results["load_average_after"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> None:
    b, e = results["bulk"], results["bulk_baseline_enqueue"]
    table = Table(
        ["path", "requests", "recipients", "s per request p50", "recipients/s", "vs enqueue"]
    )
    table.add(
        [
            "POST send-bulk (HTTP)",
            b["requests"],
            b["queued"],
            b["request_seconds_p50"],
            b["recipients_per_second"],
            b["recipients_per_second"] / e["recipients_per_second"],
        ]
    )
    table.add(
        [
            "enqueue() direct (baseline)",
            e["requests"],
            e["requests"] * BULK_RECIPIENTS,
            e["request_seconds_p50"],
            e["recipients_per_second"],
            1.0,
        ]
    )
    print(f"\nAPI bulk ingest, {BULK_RECIPIENTS:,} recipients per request, one at a time")
    print(table.render())
    if "batch" in results:
        b, e = results["batch"], results["batch_baseline_enqueue"]
        table = Table(
            ["path", "requests", "messages", "s per request p50", "messages/s", "vs enqueue"]
        )
        table.add(
            [
                "POST batch (HTTP)",
                b["requests"],
                b["queued"],
                b["request_seconds_p50"],
                b["messages_per_second"],
                b["messages_per_second"] / e["messages_per_second"],
            ]
        )
        table.add(
            [
                "enqueue() x500 direct (baseline)",
                e["requests"],
                e["requests"] * BATCH_MESSAGES,
                e["request_seconds_p50"],
                e["messages_per_second"],
                1.0,
            ]
        )
        print(f"\nAPI batch ingest, {BATCH_MESSAGES} different messages per request")
        print(table.render())
    phases = results["single"]
    table = Table(
        [
            "endpoint",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "non-2xx",
            "server CPU %",
            "Postgres CPU %",
            "p50 vs health",
            "p50 vs bare",
        ]
    )
    names = {
        "send": "POST /emails/send",
        "health": "GET /health (baseline)",
        "bare": "bare aiohttp (baseline)",
    }
    for key, r in phases.items():
        table.add(
            [
                names[key],
                r["requests_per_second"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r["non2xx"],
                r["server_cpu_percent"],
                r["postgres_cpu_percent"],
                _ratio(r["p50_ms"], phases["health"]["p50_ms"]),
                _ratio(r["p50_ms"], phases["bare"]["p50_ms"]),
            ]
        )
    send = phases["send"]
    print(
        f"\nSingle send under load: {results['concurrency']} connections, "
        f"{results['seconds_per_phase']:g}s per endpoint, client: {send['client']}; "
        f"every 202 a committed row: {send['every_202_a_row']} ({send['rows']:,} rows)"
    )
    print(table.render())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bare-server"]:
        bare_server(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(
        prog="benchmarks api",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=0, help="send-bulk requests (5; quick 2)")
    parser.add_argument("--seconds", type=float, default=0.0, help="per endpoint (10; quick 3)")
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    report(results)
    write_json("api", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
