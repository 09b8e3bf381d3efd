"""The MTA worker against a real SMTP peer: messages queued in Postgres arrive with the right
envelope, the destination domain's rate and back-off hold back what they must, and a graceful
stop finishes what is on the wire and gives the rest back."""

from __future__ import annotations

from collections import Counter

import asyncpg
import pytest

from tests.helpers import queue_messages, wait_for
from tests.smtp_peer import SMTPPeer


@pytest.fixture(params=["one command at a time", "pipelining"])
async def smtp_peer(request):
    """Each test twice: a peer without PIPELINING, and one with it, where a message's end of
    data and the next message's MAIL, RCPT and DATA share the wire."""
    peer = await SMTPPeer(pipelining=request.param == "pipelining").start()
    yield peer
    await peer.stop()


async def statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT recipient, status FROM messages")
    return {r["recipient"]: r["status"] for r in rows}


async def test_queued_messages_are_delivered_over_one_reused_connection(
    pool, make_settings, smtp_peer, start_worker
):
    recipients = [f"user{i}@dest.test" for i in range(20)]
    await queue_messages(pool, recipients)
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}, "default_throttle": {"max_connections": 1}}
    )
    worker = await start_worker(settings)

    await wait_for(lambda: len(smtp_peer.received) == 20)
    await wait_for(lambda: _all_sent(pool))
    await worker.stop()

    assert sorted(r.rcpt_tos[0] for r in smtp_peer.received) == sorted(recipients)
    assert {r.connection for r in smtp_peer.received} == {1}
    first = smtp_peer.received[0]
    assert first.mail_from.endswith("@bounces.localhost")
    assert first.message["From"] == "news@acme.test"
    assert first.message["Subject"] == "Hello"
    events = await pool.fetch("SELECT type, data FROM events ORDER BY id")
    # Each message "sent" when queued (one statement for all 20), then delivered at its 250.
    assert [e["type"] for e in events] == ["email.sent"] * 20 + ["email.delivered"] * 20
    assert all(e["data"]["smtp_code"] == 250 for e in events[20:])


async def _all_sent(pool: asyncpg.Pool) -> bool:
    return set((await statuses(pool)).values()) == {"sent"}


async def test_a_sandbox_message_goes_to_the_sink_never_to_its_real_route(
    pool, make_settings, smtp_peer, start_worker
):
    sink = await SMTPPeer().start()
    try:
        [sandboxed, _] = await queue_messages(pool, ["a@dest.test", "b@dest.test"])
        await pool.execute("UPDATE messages SET sandbox = true WHERE id = $1", sandboxed)
        settings = make_settings(
            mta={"routes": {"dest.test": smtp_peer.hop}, "sandbox_sink": sink.hop}
        )
        worker = await start_worker(settings)
        await wait_for(lambda: sink.received and smtp_peer.received)
        await worker.stop()
    finally:
        await sink.stop()

    assert [r.rcpt_tos for r in sink.received] == [["a@dest.test"]]
    assert [r.rcpt_tos for r in smtp_peer.received] == [["b@dest.test"]]


async def test_an_idle_connection_is_closed_and_its_slot_given_back(
    pool, make_settings, smtp_peer, start_worker
):
    await queue_messages(pool, ["a@dest.test"])
    settings = make_settings(mta={"routes": {"dest.test": smtp_peer.hop}, "idle_timeout": 0.4})
    worker = await start_worker(settings)

    await wait_for(lambda: smtp_peer.received)
    await wait_for(lambda: smtp_peer.state.open_now == 0, timeout=5)  # closed by the MTA
    # The slot is given back just after the close, by the running worker (not by the stop).
    await wait_for(lambda: _held_slots_are(pool, 0))
    await worker.stop()

    assert smtp_peer.state.connections == 1


async def _held_slots_are(pool: asyncpg.Pool, n: int) -> bool:
    held = await pool.fetchval("SELECT count(*) FROM mta_connection_slots WHERE owner IS NOT NULL")
    return held == n


async def test_smuggling_sequences_in_a_body_reach_the_peer_as_one_message(
    pool, make_settings, smtp_peer, start_worker
):
    evil = (
        "Hello\n.\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n"
        "DATA\r\nsmuggled\r\n.\r\nand\r.\rbare CR and \n.\r\n LF-dot mixes"
    )
    await queue_messages(pool, ["target@dest.test"], text=evil)
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    await wait_for(lambda: smtp_peer.received)
    await worker.stop()

    [received] = smtp_peer.received  # one transaction, one recipient: nothing smuggled
    assert received.rcpt_tos == ["target@dest.test"]
    assert b"\n" not in received.data.replace(b"\r\n", b"")  # no bare LF on the wire
    assert b"\r" not in received.data.replace(b"\r\n", b"")  # no bare CR either
    assert "MAIL FROM:<evil@attacker.test>" in received.message.get_content()


# -- what a destination domain allows ----------------------------------------------------------


async def _given_back(pool: asyncpg.Pool, ids: list[int]) -> list[asyncpg.Record] | None:
    """The rows, once every one has been released to the queue for later, untried."""
    rows = await pool.fetch(
        "SELECT *, next_attempt_at > now() AS later FROM messages WHERE id = ANY($1::bigint[])",
        ids,
    )
    done = all(r["status"] != "sending" and (r["status"] != "queued" or r["later"]) for r in rows)
    return rows if done else None


async def test_a_domain_in_back_off_is_not_tried_until_it_ends(
    pool, make_settings, smtp_peer, start_worker
):
    # The receiver asks us to slow down (421): the domain is paused for ten minutes, and
    # messages to it claimed meanwhile go back to the queue untried, due when the pause ends.
    smtp_peer.fault("MAIL", 421, "4.7.0 too many messages, slow down", times=1)
    [first] = await queue_messages(pool, ["first@dest.test"])
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}, "default_throttle": {"backoff_seconds": 600}}
    )
    worker = await start_worker(settings)
    await wait_for(lambda: _given_back(pool, [first]))

    later = await queue_messages(pool, ["second@dest.test", "third@dest.test"])
    await wait_for(lambda: _claimed(pool, later))
    rows = await wait_for(lambda: _given_back(pool, later))
    await worker.stop()

    assert smtp_peer.received == []  # the peer would have taken them: only the pause held them
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", first) == "deferred"
    for row in rows:
        assert (row["status"], row["attempts"], row["possible_duplicate"]) == ("queued", 0, False)
    resumes = await pool.fetchval(
        "SELECT bool_and(next_attempt_at > now() + interval '9 minutes') FROM messages"
    )
    assert resumes  # the first one's retry and the others' release both wait out the pause


async def _claimed(pool: asyncpg.Pool, ids: list[int]) -> bool:
    """Every one of them has been through a worker's hands (leased, or already back)."""
    untouched = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND status = 'queued'"
        " AND next_attempt_at <= now()",
        ids,
    )
    return untouched == 0


async def test_past_its_burst_a_domain_gets_messages_only_at_its_rate(
    pool, make_settings, smtp_peer, start_worker
):
    # A burst of two, then one message every 1,000 seconds: the third waits for its token
    # however free the connection is, and a stop meanwhile gives it back untried.
    ids = await queue_messages(pool, ["a@dest.test", "b@dest.test", "c@dest.test"])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "throttle": {"dest.test": {"rate_per_second": 0.001, "burst": 2}},
            "shutdown_grace": 0.5,
        }
    )
    worker = await start_worker(settings)
    await wait_for(lambda: _claimed(pool, ids))
    await wait_for(lambda: len(smtp_peer.received) >= 2)
    await worker.stop()

    assert len(smtp_peer.received) == 2
    rows = await pool.fetch("SELECT * FROM messages WHERE status <> 'sent'")
    assert [(r["status"], r["attempts"], r["possible_duplicate"]) for r in rows] == [
        ("queued", 0, False)
    ]


# -- stopping ---------------------------------------------------------------------------------


async def test_graceful_stop_finishes_in_flight_messages_and_releases_the_rest(
    pool, make_settings, smtp_peer, start_worker
):
    # One connection, and the peer holds each DATA until the test lets it through: the test,
    # not a race against sleeps, decides what is on the wire when the stop comes.
    gate = smtp_peer.hold("DATA")
    await queue_messages(pool, [f"u{i}@dest.test" for i in range(10)])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "default_throttle": {"max_connections": 1},
            "shutdown_grace": 2.0,
        }
    )
    worker = await start_worker(settings)
    await wait_for(lambda: gate.held)
    [finishing] = gate.held

    worker.worker.stop()
    gate.release()  # the message on the wire at the stop is accepted within the grace...
    await wait_for(lambda: smtp_peer.received)
    await wait_for(lambda: gate.held)  # ...and the next one, still in flight, starts
    [cut_off] = gate.held
    await worker.stop(timeout=10)  # held past the grace: cut off

    rows = await pool.fetch("SELECT * FROM messages")
    assert Counter(r["status"] for r in rows) == {"sent": 1, "queued": 9}
    assert [r.rcpt_tos for r in smtp_peer.received] == [[finishing]]
    sent = [r["recipient"] for r in rows if r["status"] == "sent"]
    assert sent == [finishing]
    # The one cut off mid-transaction goes back to the queue flagged: the peer may have it.
    flagged = [r["recipient"] for r in rows if r["possible_duplicate"]]
    assert flagged == [cut_off]
    assert all(
        r["lease_token"] is None and r["attempts"] == 0 for r in rows if r["status"] == "queued"
    )
    await wait_for(lambda: smtp_peer.state.open_now == 0)
