"""Replies reach the tenant whole: fields, bodies, headers, raw bytes and attachments."""

from __future__ import annotations

import base64
import hashlib

from tests.inbound.conftest import REPLY_ADDRESS, corpus, send, sent_message, snapshot

PDF = b"%PDF-1.4\n\x00\xff binary \r\n bytes"


def reply_with_attachment(message_id: str, recipient: str) -> bytes:
    encoded = base64.b64encode(PDF).decode() + "\r\n"
    return (
        f"From: Sam <{recipient}>\r\n"
        f"To: Acme News <{REPLY_ADDRESS}>\r\n"
        "Cc: boss@dest.test\r\n"
        "Subject: =?utf-8?q?Re:_Hell=C3=B6?=\r\n"
        f"In-Reply-To: <{message_id}>\r\n"
        "Message-ID: <reply-with-file@dest.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="XX"\r\n'
        "\r\n"
        "--XX\r\n"
        'Content-Type: multipart/alternative; boundary="YY"\r\n'
        "\r\n"
        "--YY\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Yes, the pricing sheet is attached.\r\n"
        "--YY\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
        "<p>Yes, the pricing sheet is attached.</p>\r\n"
        "--YY--\r\n"
        "--XX\r\n"
        "Content-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="../../pricing.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{encoded}"
        "--XX--\r\n"
    ).encode()


async def test_a_reply_is_kept_whole_once_even_when_delivered_twice(
    pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    raw = reply_with_attachment(original.message_id, original.recipient)

    for _ in range(2):  # a sender that lost our 250 delivers again
        errors, reply = await send(server.port, raw, original.recipient, [REPLY_ADDRESS])
        assert errors == {} and reply.startswith("2.0.0")

    [email] = await pool.fetch("SELECT * FROM inbound_emails")
    tenant = await pool.fetchval("SELECT tenant_id FROM messages WHERE id = $1", original.queue_id)
    assert email["tenant_id"] == tenant and email["message_id"] == original.queue_id
    assert email["public_id"].startswith("inb_") and email["auto"] is False
    assert email["from_email"] == original.recipient
    assert email["to_emails"] == [REPLY_ADDRESS] and email["cc_emails"] == ["boss@dest.test"]
    assert email["subject"] == "Re: Hellö"
    assert email["text_body"] == "Yes, the pricing sheet is attached."
    assert email["html_body"] == "<p>Yes, the pricing sheet is attached.</p>"
    assert ["Subject", "Re: Hellö"] in email["headers"]
    assert bytes(email["raw"]) == raw
    assert email["attachments"] == [
        {
            "index": 0,
            "filename": "pricing.pdf",  # no path a download could follow
            "content_type": "application/pdf",
            "size": len(PDF),
            "sha256": hashlib.sha256(PDF).hexdigest(),
        }
    ]
    [part] = await pool.fetch("SELECT ordinal, content FROM inbound_attachments")
    assert (part["ordinal"], bytes(part["content"])) == (0, PDF)

    events = await pool.fetch(
        "SELECT type, data FROM events WHERE message_id = $1 AND type <> 'email.sent' ORDER BY id",
        original.queue_id,
    )
    assert [e["type"] for e in events] == ["email.replied", "email.received"]
    assert events[1]["data"] == {
        "inbound_id": email["public_id"],
        "from": original.recipient,
        "subject": "Re: Hellö",
        "auto": False,
    }
    assert server.metrics.messages.labels("reply", "duplicate")._value.get() == 1


async def test_an_automatic_reply_is_kept_as_automatic(pool, inbound_settings, start_inbound):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    # The corpus has bare LF line ends; SMTP carries CRLF, and the raw copy is what arrived.
    raw = original.fill(corpus("ooo_outlook_automatic_reply.eml")).replace(b"\n", b"\r\n")
    errors, _ = await send(server.port, raw, original.recipient, [REPLY_ADDRESS])
    assert errors == {}
    [email] = await pool.fetch("SELECT auto, raw FROM inbound_emails")
    assert email["auto"] is True and bytes(email["raw"]) == raw
    [data] = await pool.fetch("SELECT data FROM events WHERE type = 'email.received'")
    assert data["data"]["auto"] is True


async def test_unmatched_mail_and_reports_are_not_kept(pool, inbound_settings, start_inbound):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    before = await snapshot(pool)

    stranger = reply_with_attachment("not-ours@elsewhere.test", original.recipient)
    errors, reply = await send(server.port, stranger, original.recipient, [REPLY_ADDRESS])
    assert errors == {} and reply.startswith("2.0.0")
    assert await snapshot(pool) == before

    bounce = original.fill(corpus("postfix_hard_user_unknown_5.1.1.eml"))
    await send(server.port, bounce, "", [original.return_path])
    assert (await snapshot(pool))["inbound"] == before["inbound"] + 1
    assert await pool.fetchval("SELECT count(*) FROM inbound_emails") == 0
    assert await pool.fetchval("SELECT count(*) FROM inbound_attachments") == 0
