"""Two MTA "hosts" on one database: two `penguinmails mta` processes with their own hostnames
and source addresses (127.0.0.1 and 127.0.0.2), as two send machines would run. The limits
that are global live in Postgres, so they hold across hosts: a source's connection cap toward
a destination (mta_connection_slots), fairness between tenants (the claim), and leases (a
host killed with -9 has its leased messages taken over by the other, each delivered at least
once).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import asyncpg
import orjson

from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import role_env, size, wait_for

CAP = 3  # connections to dest.test, for both hosts together


def _host_env(database_url: str, tmp_path, hop: str, name: str, address: str) -> dict[str, str]:
    return role_env(
        database_url,
        tmp_path / name,
        PENGUINMAILS_MTA__HOSTNAME=f"{name}.test",
        # One source name on both hosts: receivers count connections per sending address, so
        # a source's caps are shared by whoever sends as it (two hosts behind one NAT
        # address, say). Each host binds its own local address and greets with its own name.
        PENGUINMAILS_MTA__SOURCES=orjson.dumps(
            {"egress": {"address": address, "ehlo": f"{name}.test"}}
        ).decode(),
        PENGUINMAILS_MTA__ROUTES=orjson.dumps({"dest.test": hop}).decode(),
        PENGUINMAILS_MTA__THROTTLE=orjson.dumps({"dest.test": {"max_connections": CAP}}).decode(),
        # A host claims a little at a time, as one of many would: what it has not claimed
        # stays in the shared queue for the fair claim and for the other host.
        PENGUINMAILS_MTA__BATCH_SIZE="5",
        PENGUINMAILS_MTA__MAX_IN_FLIGHT="10",
        PENGUINMAILS_MTA__LEASE_SECONDS="2",
    )


async def _queue(pool: asyncpg.Pool, tenant: str, count: int) -> list[str]:
    tenant_id = await ensure_tenant(pool, tenant)
    recipients = [f"{tenant}{i}@dest.test" for i in range(count)]
    await enqueue(
        pool,
        tenant_id,
        Draft(
            recipients=recipients,
            from_email=f"news@{tenant}.test",
            subject="Hello",
            text="Hi there",
        ),
    )
    return recipients


async def test_caps_fairness_and_leases_hold_across_two_hosts(
    pool, database_url, smtp_peer, tmp_path, spawn
):
    smtp_peer.fault("DATA", delay=0.05)
    bulk = await _queue(pool, "bulkco", size(900, 5_000))
    host_a = await spawn(
        "mta", _host_env(database_url, tmp_path, smtp_peer.hop, "host-a", "127.0.0.1")
    )
    host_b = await spawn(
        "mta", _host_env(database_url, tmp_path, smtp_peer.hop, "host-b", "127.0.0.2")
    )
    # Both hosts sending: the first to start took the whole cap, and gives back the slots
    # above its share once it sees the other (presence, every couple of seconds).
    await wait_for(lambda: len({r.peer for r in smtp_peer.received}) == 2, timeout=30)

    # Fairness: another tenant's mail, queued behind the backlog, goes out ahead of it:
    # what of the backlog goes out meanwhile is what was in flight, its turns in the claims
    # that share each batch between the two tenants, and what the other host sent while a
    # small message it had claimed waited for a connection slot (its host's share of the cap
    # is 2 of 3, rounded up, so one host can wait SLOT_WAIT and retry): not the rest of it.
    before = _delivered(smtp_peer, bulk)
    small = await _queue(pool, "smallco", 20)
    await wait_for(lambda: _delivered(smtp_peer, small) == len(small), timeout=30)
    meanwhile = _delivered(smtp_peer, bulk) - before
    print(f"backlog: {before} before, {meanwhile} while the 20 went out")
    assert meanwhile < (len(bulk) - before) * 2 / 3, meanwhile

    # Leases: host A dies mid-run, holding leases; host B takes its messages over.
    await wait_for(lambda: _leased_by(pool, host_a.pid), timeout=10)
    host_a.kill()
    await host_a.wait()
    orphaned = await _leased_by(pool, host_a.pid)
    assert orphaned
    await wait_for(lambda: _all_sent(pool, len(bulk) + len(small)), timeout=120)
    host_b.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(host_b.wait(), 30) == 0

    delivered = Counter(r.rcpt_tos[0] for r in smtp_peer.received)
    assert set(delivered) == set(bulk) | set(small)  # every message at least once
    orphans = await pool.fetch(
        "SELECT recipient, status, lease_owner FROM messages WHERE id = ANY($1::bigint[])",
        orphaned,
    )
    assert {row["status"] for row in orphans} == {"sent"}
    assert all(row["recipient"] in delivered for row in orphans)
    # The cap held across both hosts, and bound them: each host alone may open its share
    # (2 of 3, rounded up), so only the shared slots keep the two at 3 rather than 4.
    assert smtp_peer.state.max_open == CAP, smtp_peer.state.max_open
    # Both hosts sent, each from its own address and with its own name.
    by_host = Counter((r.peer, r.helo) for r in smtp_peer.received)
    assert set(by_host) == {("127.0.0.1", "host-a.test"), ("127.0.0.2", "host-b.test")}, by_host


def _delivered(peer, recipients: list[str]) -> int:
    return len({r.rcpt_tos[0] for r in peer.received} & set(recipients))


async def _leased_by(pool: asyncpg.Pool, pid: int) -> list[int]:
    rows = await pool.fetch(
        "SELECT id FROM messages WHERE status = 'sending' AND lease_owner LIKE $1",
        f"%:{pid}:%",
    )
    return [row["id"] for row in rows]


async def _all_sent(pool: asyncpg.Pool, total: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'") == total
