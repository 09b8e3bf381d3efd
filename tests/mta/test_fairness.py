"""Fairness between tenants and priority classes, through a running worker: a tenant's huge
backlog does not hold back another tenant's messages queued after it."""

from __future__ import annotations

import time

import asyncpg
import pytest

from penguinmails.messages import ensure_tenant
from tests.helpers import queue_messages, wait_for
from tests.smtp_peer import SMTPPeer

BACKLOG = 200_000


@pytest.mark.slow
async def test_another_tenant_s_hundred_go_out_within_seconds_of_a_200k_backlog(
    pool: asyncpg.Pool, make_settings, smtp_peer: SMTPPeer, start_worker
) -> None:
    bulk = await ensure_tenant(pool, "bulkco")
    await pool.execute(
        """INSERT INTO messages (tenant_id, message_id, from_email, recipient, recipient_domain,
                                 subject, text_body)
           SELECT $1, 'bulk' || g || '@bulkco.test', 'news@bulkco.test',
                  'b' || g || '@dest.test', 'dest.test', 'Spring sale', 'Everything must go'
           FROM generate_series(1, $2) g""",
        bulk,
        BACKLOG,
    )
    await pool.execute("ANALYZE messages")
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))
    await wait_for(lambda: len(smtp_peer.received) >= 300, timeout=60)  # the backlog is moving

    started = time.monotonic()
    recipients = [f"user{i}@dest.test" for i in range(100)]
    await queue_messages(pool, recipients, priority="transactional")
    await wait_for(
        lambda: {r.rcpt_tos[0] for r in smtp_peer.received} >= set(recipients), timeout=30
    )
    elapsed = time.monotonic() - started
    left = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND status = 'queued'", bulk
    )
    await worker.stop()
    # They went before almost all of the backlog, not after it: most of it is still queued.
    assert left > BACKLOG * 0.9, left
    assert elapsed < 15, elapsed
