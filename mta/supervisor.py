"""`penguinmails mta` with `processes` above 1: a small supervisor over N worker processes.

Each worker is the single-process MTA itself (`penguinmails mta --processes 1`), run as a
subprocess of the same Python rather than forked or spawned through multiprocessing: it reads
the configuration, sets up logging and uvloop and handles its signals exactly as a lone MTA
does, nothing is pickled across, and a worker is what an operator would run by hand. The
workers share every global limit through the database already (a domain's connection slots,
leases, the count of live processes); the supervisor holds no database connection at all.

Supervision: a worker that exits while no stop was asked for is logged and started again,
after a back-off that doubles with each crash in a row; a worker that keeps dying soon after
it starts (a bad config, pending migrations, a database that refuses it) makes the
supervisor stop the others and exit non-zero, so systemd's own restart limits apply instead
of a spin.

Stopping: the first SIGTERM or SIGINT is forwarded to every worker, which drain as a lone MTA
does (bounded by twice `shutdown_grace`); the supervisor waits for all of them, then exits 0.
A second signal is forwarded too (each worker then stops at once) and the supervisor exits
130. Each worker runs in a session of its own, so a terminal's Ctrl-C or a signal to the
supervisor's process group reaches a worker once, through the supervisor, never twice (a
second signal would force it). Under systemd the unit uses `KillMode=mixed` for the same
reason: SIGTERM to the supervisor alone, the final SIGKILL to everything.

Orphans: each worker asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), and
checks it was not orphaned before asking; a supervisor killed with SIGKILL therefore leaves
workers that drain and exit on their own, not workers that run on unsupervised.

Readiness and metrics: each worker gets a notification socket of the supervisor's own as its
`NOTIFY_SOCKET` (the sd_notify protocol; only datagrams the kernel says the worker sent are
believed), says READY=1 there with the address of its metrics server (127.0.0.1 on a port of
its choosing), and the supervisor tells systemd READY=1 once every worker has. The supervisor
alone serves `[mta] metrics_listen`: `/metrics` merges the workers' metrics with a `worker`
label (one scrape target, no port per worker to collide with the other roles' ports),
`/healthz` is ok when every worker answers ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from penguinmails.config import Settings
from penguinmails.lifecycle import FORCE_EXIT_SECONDS
from penguinmails.observability import serving
from penguinmails.systemd import notify

log = logging.getLogger(__name__)

METRICS_KEY = "PENGUINMAILS_METRICS"  # a worker's sd_notify line naming its metrics URL
RESTART_FIRST, RESTART_MAX = 0.5, 30.0  # seconds before a crashed worker starts again
# A worker that ran this long before dying was working: its crash count starts over.
STABLE_SECONDS = 10.0
GIVE_UP_AFTER = 5  # crashes in a row, each sooner than STABLE_SECONDS after its start
SCRAPE_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def follow_parent(supervisor: int) -> None:
    """In a worker: SIGTERM when the supervisor dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before the request above: the worker was re-parented then.
    if os.getppid() != supervisor:
        raise SystemExit("penguinmails: the MTA supervisor is gone; worker not started")


def worker_metrics_listen(settings: Settings) -> str:
    """Where a worker serves its own metrics: loopback, any free port (the supervisor is told
    which), or nowhere when metrics are off."""
    return "127.0.0.1:0" if settings.mta.metrics_listen else ""


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sending pid of a datagram received with SO_PASSCRED."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid: int = _UCRED.unpack(data[: _UCRED.size])[0]
            return pid
    return None


@dataclasses.dataclass
class _Worker:
    index: int
    notify_name: str
    notify_sock: socket.socket
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    crashes: int = 0  # in a row, each soon after its start
    ready: bool = False
    metrics_url: str | None = None


class GaveUp(Exception):
    """Workers kept crashing at start; the supervisor stopped rather than spin."""


class Supervisor:
    def __init__(self, settings: Settings, count: int, command: Sequence[str]) -> None:
        """`command`: how to run one worker (the same executable, `mta --processes 1`)."""
        self._settings = settings
        self._command = list(command)
        self._workers: list[_Worker] = []
        self._signals = 0
        self._stop = asyncio.Event()
        self._ready_told = False
        self.restarts = 0
        for index in range(count):
            name = f"penguinmails-mta-{os.getpid()}-{secrets.token_hex(4)}-{index}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind("\0" + name)  # abstract: nothing on disk to clean up
            sock.setblocking(False)
            self._workers.append(_Worker(index, name, sock))

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc and w.proc.returncode is None]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        for worker in self._workers:
            loop.add_reader(worker.notify_sock, self._on_notify, worker)
        try:
            async with serving(self._metrics_app(), self._settings.mta.metrics_listen) as url:
                log.info(
                    "mta supervisor started",
                    extra={
                        "action": "supervisor_start",
                        "processes": len(self._workers),
                        "metrics": url,
                    },
                )
                watchers = [
                    asyncio.create_task(self._keep(w), name=f"mta-worker-{w.index}")
                    for w in self._workers
                ]
                stop = asyncio.create_task(self._stop.wait(), name="stop-requested")
                done, _ = await asyncio.wait([*watchers, stop], return_when="FIRST_COMPLETED")
                gave_up = next((t for t in done if t is not stop and t.exception()), None)
                stop.cancel()
                self._stop.set()  # no more restarts, whatever ended the wait
                if gave_up is not None:
                    log.error(str(gave_up.exception()), extra={"action": "supervisor_gave_up"})
                code = await self._stop_workers()
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                return 1 if gave_up is not None else code
        finally:
            for worker in self._workers:
                loop.remove_reader(worker.notify_sock)
                worker.notify_sock.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        log.info(
            "stop requested",
            extra={"action": "signal", "signal": signal.Signals(signum).name},
        )
        if self._signals == 1:
            notify("STOPPING=1")
        # Forward every stop request: the first drains each worker, a second forces them.
        self._forward(signal.SIGTERM)
        self._stop.set()

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    async def _stop_workers(self) -> int:
        """Wait for every worker to exit within its own bound: 0 when all drained in time,
        130 when a second signal forced them, 1 when some had to be killed."""
        if self._signals == 0:  # giving up: ask the healthy ones to drain
            self._forward(signal.SIGTERM)
        # A worker's drain: in-flight messages, then the last outcome writes, each bounded
        # by shutdown_grace; a little more for its exit.
        deadline = time.monotonic() + 2 * self._settings.mta.shutdown_grace + FORCE_EXIT_SECONDS
        forced = False
        while self.pids:
            if self._signals >= 2 and not forced:
                forced = True
                deadline = min(deadline, time.monotonic() + FORCE_EXIT_SECONDS + 1)
            if time.monotonic() >= deadline:
                log.error(
                    "workers did not stop in time; killed",
                    extra={"action": "supervisor_stop", "pids": self.pids},
                )
                self._forward(signal.SIGKILL)
                await self._wait_all()
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_all(), 0.1)
        log.info("mta supervisor stopped", extra={"action": "supervisor_stop"})
        return 130 if forced else 0

    async def _wait_all(self) -> None:
        await asyncio.gather(*(w.proc.wait() for w in self._workers if w.proc is not None))

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker position until a stop is asked; raise GaveUp if it keeps crashing."""
        while not self._stop.is_set():
            await self._start(worker)
            assert worker.proc is not None
            if self._stop.is_set():  # the stop came while it was being started
                worker.proc.send_signal(signal.SIGTERM)
                return
            code = await worker.proc.wait()
            worker.ready, worker.metrics_url = False, None
            if self._stop.is_set():
                return
            ran = time.monotonic() - worker.started
            worker.crashes = 1 if ran >= STABLE_SECONDS else worker.crashes + 1
            log.error(
                "mta worker exited unexpectedly",
                extra={
                    "action": "worker_exited",
                    "worker": worker.index,
                    "pid": worker.proc.pid,
                    "code": code,
                    "ran_seconds": round(ran, 3),
                },
            )
            if worker.crashes >= GIVE_UP_AFTER:
                raise GaveUp(
                    f"mta worker {worker.index} crashed {worker.crashes} times in a row, each "
                    f"within {STABLE_SECONDS:g}s of starting; giving up"
                )
            delay = min(RESTART_FIRST * 2 ** (worker.crashes - 1), RESTART_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            self.restarts += 1

    async def _start(self, worker: _Worker) -> None:
        env = {
            **os.environ,
            "NOTIFY_SOCKET": "@" + worker.notify_name,
            "PENGUINMAILS_MTA__METRICS_LISTEN": worker_metrics_listen(self._settings),
            "PYTHONPATH": os.pathsep.join(
                [CODE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        worker.proc = await asyncio.create_subprocess_exec(
            *self._command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        worker.started = time.monotonic()
        log.info(
            "mta worker started",
            extra={"action": "worker_start", "worker": worker.index, "pid": worker.proc.pid},
        )

    def _on_notify(self, worker: _Worker) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                data, ancillary, _, _ = worker.notify_sock.recvmsg(4096, _CREDENTIALS_SPACE)
                # An abstract socket has no file permissions: any local process could write
                # to it. Only the worker's own datagrams count (the kernel vouches for the
                # sender's pid), as systemd's NotifyAccess=main does.
                if worker.proc is None or _sender(ancillary) != worker.proc.pid:
                    continue
                for line in data.decode("utf-8", "replace").splitlines():
                    key, _, value = line.partition("=")
                    if key == "READY" and value == "1":
                        worker.ready = True
                    elif key == METRICS_KEY:
                        worker.metrics_url = value or None
        if not self._ready_told and all(w.ready for w in self._workers):
            self._ready_told = True
            notify("READY=1")
            log.info("mta workers ready", extra={"action": "supervisor_ready"})

    # -- metrics ----------------------------------------------------------------------------

    def _metrics_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            texts = await self._scrape("/metrics")
            body = merge_metrics(
                {i: text for i, (status, text) in texts.items() if status == 200},
                workers=len(self.pids),
                restarts=self.restarts,
            )
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(request: web.Request) -> web.Response:
            answers = await self._scrape("/healthz")
            workers = {
                str(w.index): "ok" if answers.get(w.index, (0, ""))[0] == 200 else "unavailable"
                for w in self._workers
            }
            ok = all(state == "ok" for state in workers.values())
            return web.Response(
                status=200 if ok else 503,
                body=orjson.dumps({"status": "ok" if ok else "unavailable", "workers": workers}),
                content_type="application/json",
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        return app

    async def _scrape(self, path: str) -> dict[int, tuple[int, str]]:
        """Each ready worker's answer at `path`: {index: (status, body)}; absent if none."""
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def one(url: str) -> tuple[int, str]:
                try:
                    async with http.get(url + path) as response:
                        return response.status, await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    return 0, ""

            targets = [(w.index, w.metrics_url) for w in self._workers if w.metrics_url]
            answers = await asyncio.gather(*(one(url) for _, url in targets))
        return {index: answer for (index, _), answer in zip(targets, answers, strict=True)}


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: dict[int, str], *, workers: int, restarts: int) -> bytes:
    """The workers' exposition texts as one, each sample labelled with its worker, plus the
    supervisor's own two gauges. Sums across workers are left to the query (`sum without
    (worker)`): every series stays a valid series of one process."""
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            into = families.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = into
            into.samples.extend(
                sample._replace(labels={**sample.labels, "worker": str(index)})
                for sample in family.samples
            )
    own = Metric("penguinmails_mta_workers", "MTA worker processes running now", "gauge")
    own.add_sample("penguinmails_mta_workers", {}, workers)
    again = Metric(
        "penguinmails_mta_worker_restarts",
        "MTA workers started again after an unexpected exit",
        "counter",
    )
    again.add_sample("penguinmails_mta_worker_restarts_total", {}, restarts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), own, again]))
    return generate_latest(registry)


# Where this code was imported from: the workers import theirs from the same place, not
# from whatever the working directory or the environment would put first (-P below).
CODE_ROOT = str(Path(__file__).resolve().parent.parent)


def worker_command(config: str | None) -> list[str]:
    """One worker: this same Python and code, the single-process MTA."""
    command = [sys.executable, "-P", "-m", "penguinmails.cli"]
    if config:
        command += ["--config", config]
    return [*command, "mta", "--processes", "1", "--supervisor", str(os.getpid())]


async def supervise(settings: Settings, count: int, config: str | None) -> int:
    return await Supervisor(settings, count, worker_command(config)).run()
