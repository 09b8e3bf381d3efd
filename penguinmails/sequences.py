"""Sequences' scheduler: each running enrolment's next step becomes a queued message.

A step's message is created once the step before it has been accepted by its receiver (step
1's at enrolment), with its due time computed then into next_attempt_at (the previous step's
sent_at plus the step's delay): the MTA's claim does the waiting, so the scheduler only has
to notice that a step was sent, and its interval delays a follow-up only when the follow-up's
own delay is shorter than the interval. `schedule` is one statement per batch
(sql/sequences.sql); sequence_messages' primary key (enrolment, step) makes a second run, or
a second scheduler in another API process, queue nothing twice.

Stopping is not done here: a trigger on events (migration 0027) stops the enrolment and
cancels its waiting step message in the transaction that records the reply, bounce,
complaint, unsubscribe or click. A step message the MTA has already claimed ('sending') is in
an SMTP conversation: it finishes, as a cancelled campaign's messages do.

`Scheduler` runs `schedule` every `interval` seconds in the API process (the role that
creates sequences and enrolments, and the only one besides the MTA that writes messages);
on stop it lets a batch in flight commit, then ends. Each tick first decides the A/B tests
that can be decided (penguinmails.ab), so steps queued in it already carry a new winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from penguinmails import windows
from penguinmails.ab import decide
from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("penguinmails", "sql/sequences.sql")

BATCH = 500
INTERVAL = 5.0
STOP_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Scheduled:
    queued: int = 0
    completed: int = 0
    stopped: int = 0

    def __add__(self, other: Scheduled) -> Scheduled:
        return Scheduled(
            self.queued + other.queued,
            self.completed + other.completed,
            self.stopped + other.stopped,
        )


async def schedule(
    conn: asyncpg.Connection | asyncpg.Pool,
    enrollments: Sequence[int] | None = None,
    batch: int = BATCH,
    now: datetime | None = None,
) -> Scheduled:
    """Queue every due step (of `enrollments` only, if given), batch by batch, until none is
    left; answers how many steps were queued and enrolments ended. `now` stands in for the
    database's clock (tests of sending windows)."""
    total = Scheduled()
    ids = list(enrollments) if enrollments is not None else None
    if ids is None:  # a tick (not an enrolment's own call): windows' holidays kept ahead
        await windows.extend(conn, now)
    after = None  # keyset: each batch starts after the last one's highest enrolment id
    while True:
        row = await conn.fetchrow(SQL["schedule_steps"], batch, ids, now, after)
        total += Scheduled(row["queued"], row["completed"], row["stopped"])
        if row["scanned"] < batch:
            return total
        after = row["last_id"]


class Scheduler:
    """`schedule` every `interval` seconds until `stop`; database errors are logged and
    retried at the next tick (the statement is all or nothing, so nothing is half done)."""

    def __init__(self, pool: asyncpg.Pool, interval: float = INTERVAL) -> None:
        self.pool = pool
        self.interval = interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sequence-scheduler")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let a batch in flight commit (within `grace`), then end."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await decide(self.pool)
                done = await schedule(self.pool)
                if done.queued or done.completed or done.stopped:
                    log.info(
                        "sequence steps scheduled",
                        extra={
                            "action": "sequence_schedule",
                            "queued": done.queued,
                            "completed": done.completed,
                            "stopped": done.stopped,
                        },
                    )
            except DATABASE_ERRORS as exc:
                log.warning(
                    "sequence scheduling failed",
                    extra={"action": "sequence_schedule", "error": str(exc)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
