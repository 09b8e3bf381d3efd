"""Each fault a receiver can produce lands the message in the right state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import queue_messages, wait_for
from tests.smtp_peer import SMTPPeer


@pytest.fixture(params=["one command at a time", "pipelining"])
async def smtp_peer(request):
    """Every fault here twice: a peer without PIPELINING, and one with it, where MAIL, RCPT and
    DATA go in one write and the fault answers one command of the group."""
    peer = await SMTPPeer(pipelining=request.param == "pipelining").start()
    yield peer
    await peer.stop()


async def _final_row(pool, recipient: str, wanted: set[str]):
    async def check():
        row = await pool.fetchrow("SELECT * FROM messages WHERE recipient = $1", recipient)
        return row if row["status"] in wanted else None

    return await wait_for(check)


@pytest.mark.parametrize(
    ("stage", "code", "message", "status"),
    [
        ("greeting", 421, "4.3.2 try later", "deferred"),
        ("greeting", 554, "5.7.1 no service for you", "bounced"),
        ("MAIL", 451, "4.3.0 local error", "deferred"),
        ("MAIL", 550, "5.7.1 sender rejected", "bounced"),
        ("RCPT", 450, "4.2.1 mailbox busy", "deferred"),
        ("RCPT", 550, "5.1.1 user unknown", "bounced"),
        ("DATA", 452, "4.3.1 insufficient storage", "deferred"),
        ("DATA", 554, "5.6.0 content rejected", "bounced"),
    ],
)
async def test_reply_codes_decide_the_status(
    pool, make_settings, smtp_peer, start_worker, stage, code, message, status
):
    smtp_peer.fault(stage, code, message)
    await queue_messages(pool, ["user@dest.test"])
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    row = await _final_row(pool, "user@dest.test", {"deferred", "bounced"})
    await worker.stop()

    assert row["status"] == status
    assert row["attempts"] == 1
    assert row["last_reply_code"] == code, row["last_reply"]
    assert row["enhanced_status"] == message.split()[0]
    assert row["lease_token"] is None
    event = await pool.fetchrow(
        "SELECT type, data FROM events WHERE message_id = $1 AND type <> 'email.sent'", row["id"]
    )
    assert event["type"] == f"email.{status}"
    assert event["data"]["enhanced_status"] == message.split()[0]
    if status == "deferred":
        # Exponential backoff with jitter around the 60 s base the tests configure.
        delay = row["next_attempt_at"] - datetime.now(UTC)
        assert timedelta(seconds=40) < delay < timedelta(seconds=75)
    suppressed = await pool.fetchval("SELECT count(*) FROM suppressions")
    assert suppressed == (1 if status == "bounced" else 0)


async def test_disconnect_mid_data_defers(pool, make_settings, smtp_peer, start_worker):
    smtp_peer.fault("DATA", disconnect=True)
    await queue_messages(pool, ["user@dest.test"])
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    row = await _final_row(pool, "user@dest.test", {"deferred", "bounced", "sent"})
    await worker.stop()

    assert row["status"] == "deferred"
    assert row["last_reply_code"] is None
    assert "4.4.2" in row["last_reply"]
    assert not smtp_peer.received


async def test_slow_greeting_trips_the_connect_timeout(
    pool, make_settings, smtp_peer, start_worker
):
    smtp_peer.fault("greeting", delay=3.0, times=1)
    await queue_messages(pool, ["user@dest.test"])
    settings = make_settings(mta={"routes": {"dest.test": smtp_peer.hop}, "connect_timeout": 0.5})
    worker = await start_worker(settings)

    row = await _final_row(pool, "user@dest.test", {"deferred", "bounced", "sent"})
    await worker.stop()

    assert row["status"] == "deferred"
    assert "connection to 127.0.0.1" in row["last_reply"]


async def test_a_deferred_message_is_retried_with_the_same_message_id(
    pool, make_settings, smtp_peer, start_worker
):
    smtp_peer.fault("RCPT", 451, "4.7.1 greylisted", times=1)
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}, "retry_base_seconds": 0.2}
    )
    worker = await start_worker(settings)

    row = await _final_row(pool, "user@dest.test", {"sent", "bounced"})
    await worker.stop()

    assert row["status"] == "sent"
    assert row["attempts"] == 2
    [received] = smtp_peer.received
    assert received.message["Message-ID"] == f"<{row['message_id']}>"
    types = await pool.fetch("SELECT type FROM events WHERE message_id = $1 ORDER BY id", queue_id)
    assert [t["type"] for t in types] == ["email.sent", "email.deferred", "email.delivered"]


async def test_deferral_past_the_maximum_age_bounces(pool, make_settings, smtp_peer, start_worker):
    smtp_peer.fault("RCPT", 451, "4.2.0 still busy")
    await queue_messages(pool, ["user@dest.test"])
    await pool.execute("UPDATE messages SET created_at = now() - interval '6 days'")
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    row = await _final_row(pool, "user@dest.test", {"deferred", "bounced"})
    await worker.stop()

    assert row["status"] == "bounced"
    data = await pool.fetchval(
        "SELECT data FROM events WHERE message_id = $1 AND type = 'email.bounced'", row["id"]
    )
    assert data["bounce_type"] == "expired"
    # An expired deferral is not the recipient's fault: no suppression.
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_starttls_is_used_when_offered(pool, make_settings, tls_smtp_peer, start_worker):
    await queue_messages(pool, ["user@dest.test"])
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": tls_smtp_peer.hop}}))

    await wait_for(lambda: tls_smtp_peer.received)
    await worker.stop()

    assert tls_smtp_peer.received[0].tls is True


async def test_tls_required_defers_instead_of_sending_in_clear(
    pool, make_settings, smtp_peer, start_worker
):
    await queue_messages(pool, ["user@dest.test"])
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "throttle": {"dest.test": {"tls_required": True}},
        }
    )
    worker = await start_worker(settings)

    row = await _final_row(pool, "user@dest.test", {"deferred", "sent", "bounced"})
    await worker.stop()

    assert row["status"] == "deferred"
    assert "4.7.10" in row["last_reply"]
    assert not smtp_peer.received


async def test_smarthost_with_auth_over_starttls(
    pool, make_settings, tls_peer_context, start_worker
):
    from tests.smtp_peer import SMTPPeer

    relay = await SMTPPeer(
        tls_context=tls_peer_context, credentials=("relayuser", "s3cret")
    ).start()
    try:
        await queue_messages(pool, ["someone@anywhere.test"])
        settings = make_settings(
            mta={"smarthost": {"host": relay.hop, "username": "relayuser", "password": "s3cret"}}
        )
        worker = await start_worker(settings)
        await wait_for(lambda: relay.received)
        await worker.stop()
    finally:
        await relay.stop()

    assert relay.logins == ["relayuser"]
    assert relay.received[0].tls is True
    assert relay.received[0].rcpt_tos == ["someone@anywhere.test"]


async def test_smarthost_refusing_credentials_defers(
    pool, make_settings, tls_peer_context, start_worker
):
    from tests.smtp_peer import SMTPPeer

    relay = await SMTPPeer(tls_context=tls_peer_context, credentials=("relayuser", "right")).start()
    try:
        await queue_messages(pool, ["someone@anywhere.test"])
        settings = make_settings(
            mta={"smarthost": {"host": relay.hop, "username": "relayuser", "password": "wrong"}}
        )
        worker = await start_worker(settings)
        row = await _final_row(pool, "someone@anywhere.test", {"deferred", "bounced", "sent"})
        await worker.stop()
    finally:
        await relay.stop()

    assert relay.received == []
    assert row["status"] == "deferred"  # our misconfiguration is never the recipient's bounce
    assert row["last_reply_code"] is None


async def test_a_row_that_crashes_the_composer_is_deferred_not_stuck(
    pool, make_settings, smtp_peer, start_worker
):
    [queue_id] = await queue_messages(pool, ["user@dest.test"])
    # Written around the API: headers must be an object, this is a JSON string.
    await pool.execute("UPDATE messages SET headers = '\"X-Oops\"'::jsonb WHERE id = $1", queue_id)
    worker = await start_worker(make_settings(mta={"routes": {"dest.test": smtp_peer.hop}}))

    row = await _final_row(pool, "user@dest.test", {"deferred", "failed", "sent"})
    await worker.stop()

    assert row["status"] == "deferred"
    assert row["lease_token"] is None and row["attempts"] == 1
    assert "internal error composing" in row["last_reply"]
    assert smtp_peer.received == []
