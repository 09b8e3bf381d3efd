"""Operator commands against a real database: status, queue retry and purge."""

from __future__ import annotations

import asyncio
import sys

from tests.helpers import queue_messages, role_env


async def _cli(database_url: str, tmp_path, *args: str, stdin: bytes | None = None):
    env = role_env(database_url, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "penguinmails.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out.decode(), err.decode()


async def _defer(pool, ids, reply: str) -> None:
    await pool.execute(
        """UPDATE messages SET status = 'deferred', attempts = 2, last_reply_code = 451,
                  last_reply = $2, next_attempt_at = now() + interval '1 hour'
           WHERE id = ANY($1::bigint[])""",
        ids,
        reply,
    )


async def test_status_shows_depth_oldest_deferral_and_reasons(pool, database_url, tmp_path):
    ids = await queue_messages(pool, ["a@slow.test", "b@slow.test", "c@fast.test"])
    await _defer(pool, ids[:2], "4.7.0 greylisted, try again later")

    code, out, err = await _cli(database_url, tmp_path, "status")

    assert code == 0, err
    assert "deferred  slow.test" in out
    assert "queued    fast.test" in out
    assert f"oldest deferred: message {ids[0]} to slow.test" in out
    assert "451   4.7.0 greylisted, try again later  2" in out
    assert "webhook backlog: 0 deliveries" in out


async def test_queue_retry_makes_only_the_matching_messages_due(pool, database_url, tmp_path):
    ids = await queue_messages(pool, ["a@slow.test", "b@other.test"])
    await _defer(pool, ids, "4.4.1 timeout")

    code, out, _ = await _cli(database_url, tmp_path, "queue", "retry", "--domain", "slow.test")

    assert code == 0
    assert "1 message(s)" in out
    due = await pool.fetch("SELECT recipient FROM messages WHERE next_attempt_at <= now()")
    assert [r["recipient"] for r in due] == ["a@slow.test"]


async def test_purge_asks_for_confirmation_and_changes_nothing_without_it(
    pool, database_url, tmp_path
):
    await queue_messages(pool, ["a@slow.test", "b@slow.test"])

    code, _, err = await _cli(database_url, tmp_path, "queue", "purge", "--domain", "slow.test")

    assert code == 1
    assert "re-run with --yes" in err
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'queued'") == 2


async def test_purge_with_yes_cancels_with_an_event_each(pool, database_url, tmp_path):
    await queue_messages(pool, ["a@slow.test", "b@slow.test", "c@keep.test"])

    code, out, err = await _cli(
        database_url, tmp_path, "queue", "purge", "--domain", "slow.test", "--yes"
    )

    assert code == 0, err
    assert "cancelled 2 message(s)" in out
    rows = await pool.fetch("SELECT recipient, status FROM messages ORDER BY id")
    assert [(r["recipient"], r["status"]) for r in rows] == [
        ("a@slow.test", "cancelled"),
        ("b@slow.test", "cancelled"),
        ("c@keep.test", "queued"),
    ]
    events = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.cancelled'")
    assert events == 2
