"""Mail that cannot be stored as it came (a NUL in a header, raw 8-bit bytes where text
belongs) is read with the offending bytes left out: it is answered 2xx once and recorded,
never 4xx (which the sender would retry for days, getting the same answer every time)."""

from __future__ import annotations

import asyncio

import pytest

from tests.inbound.conftest import REPLY_ADDRESS, send, sent_message


def _reply(message_id: str, in_reply_to: str, subject: str = "Re: Hello") -> bytes:
    return (
        f"From: Sam <ours@dest.test>\r\nTo: {REPLY_ADDRESS}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id}>\r\nIn-Reply-To: {in_reply_to}\r\n\r\n"
        "Sounds good, call me.\r\n"
    ).encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("in_reply_to", "subject", "own_id"),
    [
        ("<{id}\x00>", "Re: Hello", "r-1@dest.test"),  # NUL inside the quoted Message-ID
        ("<{id}>\x00", "Re: Hello", "r-1@dest.test"),  # NUL after it
        ("<{id}>", "Re: Hel\x00lo", "r-1@dest.test"),  # NUL in a header we keep (subject)
        ("<{id}>", "Re: =?utf-8?b?SGVsAGxv?=", "r-1@dest.test"),  # encoded NUL ("Hel\0lo")
        ("<{id}>", "Re: Hello", "r-\x001@dest.test"),  # NUL in its own Message-ID
        ("<{id}>", "Re: H\udcffllo", "r-1@dest.test"),  # raw 8-bit byte, no charset
    ],
    ids=["in-reply-to", "after-id", "subject", "encoded-subject", "own-id", "8bit-subject"],
)
async def test_a_nul_in_a_header_is_left_out_not_retried_forever(
    in_reply_to, subject, own_id, pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    data = _reply(own_id, in_reply_to.replace("{id}", original.message_id), subject)

    for _ in range(2):  # the same mail again (a sender that lost our 250) counts once
        errors, reply = await send(server.port, data, "ours@dest.test", [REPLY_ADDRESS])
        assert errors == {} and reply.startswith("2.0.0"), reply

    event, received = await pool.fetch(
        "SELECT type, message_id, data FROM events WHERE type <> 'email.sent' ORDER BY id"
    )
    assert (event["type"], event["message_id"]) == ("email.replied", original.queue_id)
    assert "\x00" not in event["data"]["subject"]
    assert event["data"]["subject"].startswith("Re: H")
    # Kept whole once, its text storable too; the raw bytes are as they arrived.
    assert received["type"] == "email.received"
    [kept] = await pool.fetch("SELECT subject, headers, raw FROM inbound_emails")
    assert kept["subject"] == received["data"]["subject"] == event["data"]["subject"]
    assert "\x00" not in str(kept["headers"])
    [logged] = await pool.fetch("SELECT header_message_id FROM inbound_messages")
    assert logged["header_message_id"] == "r-1@dest.test"


async def test_a_nul_in_a_bounce_s_fields_is_left_out(pool, inbound_settings, start_inbound):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    dsn = (
        b"From: MAILER-DAEMON@mx.dest.test\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.dest\x00.test\r\n\r\n"
        b"Final-Recipient: rfc822; ours@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such\x00 user\r\n\r\n--B--\r\n"
    )

    errors, reply = await send(server.port, dsn, "", [original.return_path])

    assert errors == {} and reply.startswith("2.0.0"), reply
    [event] = await pool.fetch("SELECT type, data FROM events WHERE type <> 'email.sent'")
    assert event["type"] == "email.bounced"
    assert event["data"]["smtp_message"] == "smtp; 550 5.1.1 no such user"
    assert event["data"]["reporting_mta"] == "mx.dest.test"
    assert await pool.fetchval(
        "SELECT last_reply FROM messages WHERE id = $1", original.queue_id
    ) == ("smtp; 550 5.1.1 no such user")


async def test_8bit_bytes_in_the_envelope_are_stored_not_retried_forever(
    pool, inbound_settings, start_inbound
):
    """aiosmtpd hands raw 8-bit envelope bytes over as surrogates, which are no UTF-8."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    data = _reply("r-1@dest.test", f"<{original.message_id}>")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    replies = []
    try:
        await reader.readline()
        for line in [
            b"EHLO client.test",
            b"MAIL FROM:<s\xffm@dest.test>",
            f"RCPT TO:<{REPLY_ADDRESS}>".encode(),
            b"DATA",
            data + b".",
            b"QUIT",
        ]:
            writer.write(line + b"\r\n")
            await writer.drain()
            while True:
                answer = await asyncio.wait_for(reader.readline(), 5)
                if answer[3:4] != b"-":
                    break
            replies.append(answer)
    finally:
        writer.close()
        await writer.wait_closed()

    assert replies[4].startswith(b"250 2.0.0"), replies
    [logged] = await pool.fetch("SELECT mail_from FROM inbound_messages")
    assert logged["mail_from"] == "s\ufffdm@dest.test"
