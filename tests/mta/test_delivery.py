"""Messages queued in Postgres arrive at a real SMTP peer with the right envelope."""

from __future__ import annotations

import asyncpg

from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.conftest import wait_for


async def queue_messages(pool: asyncpg.Pool, recipients: list[str], **draft: object) -> list[int]:
    tenant = await ensure_tenant(pool, "acme")
    fields: dict = {"from_email": "news@acme.test", "subject": "Hello", "text": "Hi there"}
    fields.update(draft)
    return await enqueue(pool, tenant, Draft(recipients=recipients, **fields))


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
    assert [e["type"] for e in events] == ["email.sent"] * 20
    assert all(e["data"]["smtp_code"] == 250 for e in events)


async def _all_sent(pool: asyncpg.Pool) -> bool:
    return set((await statuses(pool)).values()) == {"sent"}


async def test_a_sandbox_message_goes_to_the_sink_never_to_its_real_route(
    pool, make_settings, smtp_peer, start_worker
):
    from tests.smtp_peer import SMTPPeer

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
    held = await pool.fetchval("SELECT count(*) FROM mta_connection_slots WHERE owner IS NOT NULL")
    await worker.stop()

    assert held == 0
    assert smtp_peer.state.connections == 1
