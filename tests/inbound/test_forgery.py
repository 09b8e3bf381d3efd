"""Only the signed VERP address acts: a report that names one of our messages by its
Message-ID alone (which every reader of the message, and of every reply in its thread, has
seen) is at most recorded, and only when it is about that message's own recipient."""

from __future__ import annotations

import pytest

from tests.inbound.conftest import (
    BOUNCE_DOMAIN,
    FBL_ADDRESS,
    REPLY_ADDRESS,
    corpus,
    send,
    sent_message,
    snapshot,
)

POSTMASTER = f"postmaster@{BOUNCE_DOMAIN}"


def _dsn(message_id: str, final_recipient: str, action: str = "failed", status: str = "5.1.1"):
    """An RFC 3464 report that returns only the headers of the original (no Return-Path)."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.victim.test>\r\n"
        f"To: {POSTMASTER}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.victim.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.victim.test\r\n\r\n"
        f"Final-Recipient: rfc822; {final_recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: news@acme.test\r\nSubject: Hello\r\nMessage-ID: <{message_id}>\r\n\r\n"
        "--B--\r\n"
    ).encode()


def _arf(message_id: str, original_rcpt_to: str) -> bytes:
    """A complaint report with no Original-Mail-From and no Return-Path in what it returns."""
    return (
        "From: fbl@mailbox.victim.test\r\n"
        f"To: {FBL_ADDRESS}\r\n"
        "Subject: abuse report\r\n"
        "Message-ID: <arf-1@mailbox.victim.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\r\n'
        "\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: Forger/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: <{original_rcpt_to}>\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: news@acme.test\r\nSubject: Hello\r\nMessage-ID: <{message_id}>\r\n\r\n"
        "--B--\r\n"
    ).encode()


async def test_a_bounce_quoting_a_message_id_for_someone_else_changes_nothing(
    pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    before = await snapshot(pool)

    errors, reply = await send(
        server.port, _dsn(original.message_id, "ceo@victim.test"), "", [POSTMASTER]
    )

    assert errors == {} and reply.startswith("2.0.0")  # accepted, and dropped
    assert await snapshot(pool) == before
    assert server.metrics.messages.labels("unmatched", "dropped")._value.get() == 1


@pytest.mark.parametrize(
    ("action", "status", "classification"),
    [("failed", "5.1.1", "hard_bounce"), ("failed", "4.4.7", "soft_bounce"),
     ("delayed", "4.4.1", "delayed")],
)  # fmt: skip
async def test_a_report_matched_by_message_id_is_recorded_and_acts_on_nothing(
    action, status, classification, pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")

    errors, _ = await send(
        server.port,
        _dsn(original.message_id, "Ours@dest.test", action, status),
        "",
        [POSTMASTER],
    )

    assert errors == {}
    [logged] = await pool.fetch("SELECT * FROM inbound_messages")
    assert logged["message_id"] == original.queue_id
    assert logged["matched_by"] == "message_id"
    assert logged["classification"] == classification
    assert await pool.fetch("SELECT * FROM events WHERE type <> 'email.sent'") == []
    assert await pool.fetch("SELECT * FROM suppressions") == []
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", original.queue_id) == (
        "sent"
    )


async def test_a_recorded_message_id_match_does_not_stand_in_for_the_real_bounce(
    pool, inbound_settings, start_inbound
):
    """The noted report must not take the real one's idempotency key: the signed bounce
    that follows still bounces the message and suppresses its recipient."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")

    await send(server.port, _dsn(original.message_id, "ours@dest.test"), "", [POSTMASTER])
    await send(server.port, _dsn(original.message_id, "ours@dest.test"), "", [original.return_path])

    rows = await pool.fetch("SELECT matched_by FROM inbound_messages ORDER BY id")
    assert [r["matched_by"] for r in rows] == ["message_id", "verp"]
    events = await pool.fetch("SELECT type FROM events WHERE type <> 'email.sent'")
    assert [e["type"] for e in events] == ["email.bounced"]
    [suppression] = await pool.fetch("SELECT email, reason FROM suppressions")
    assert tuple(suppression) == ("ours@dest.test", "hard_bounce")
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", original.queue_id) == (
        "bounced"
    )


async def test_a_complaint_matched_by_message_id_suppresses_nobody(
    pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    before = await snapshot(pool)

    # About someone else: not even recorded.
    await send(server.port, _arf(original.message_id, "ceo@victim.test"), "x@victim.test",
               [FBL_ADDRESS])  # fmt: skip
    assert await snapshot(pool) == before

    # About our recipient: recorded, nothing else.
    await send(server.port, _arf(original.message_id, "ours@dest.test"), "x@victim.test",
               [FBL_ADDRESS])  # fmt: skip
    [logged] = await pool.fetch("SELECT * FROM inbound_messages")
    assert (logged["classification"], logged["matched_by"]) == ("complaint", "message_id")
    assert await pool.fetch("SELECT * FROM events WHERE type <> 'email.sent'") == []
    assert await pool.fetch("SELECT * FROM suppressions") == []


async def test_a_redacted_complaint_without_our_signed_address_is_dropped(
    pool, inbound_settings, start_inbound
):
    """AOL-style: the reporter redacted, the headers-only original has no Return-Path."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    before = await snapshot(pool)
    await send(
        server.port,
        original.fill(corpus("arf_aol_headers_only_abuse.eml")),
        "scomp@aol.net",
        [FBL_ADDRESS],
    )
    assert await snapshot(pool) == before


async def test_a_reply_matched_by_in_reply_to_is_a_reply_and_nothing_more(
    pool, inbound_settings, start_inbound
):
    """Replies reach the Reply-To, never the return path, so In-Reply-To is how they are
    matched; they count as replies (an event, with how they were matched), and neither
    suppress, nor bounce, nor unsubscribe."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    reply = (
        f"From: someone@else.test\r\nTo: {REPLY_ADDRESS}\r\nSubject: Re: Hello unsubscribe\r\n"
        f"Message-ID: <r-1@else.test>\r\nIn-Reply-To: <{original.message_id}>\r\n\r\n"
        "unsubscribe me, this address does not exist\r\n"
    ).encode()

    errors, _ = await send(server.port, reply, "someone@else.test", [REPLY_ADDRESS])

    assert errors == {}
    replied, received = await pool.fetch(
        "SELECT type, data FROM events WHERE type <> 'email.sent' ORDER BY id"
    )
    assert (replied["type"], received["type"]) == ("email.replied", "email.received")
    assert replied["data"]["matched_by"] == "message_id"
    assert await pool.fetch("SELECT * FROM suppressions") == []
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", original.queue_id) == (
        "sent"
    )
