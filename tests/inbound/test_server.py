"""The SMTP side: who may send what, how much, how many at once; forgeries change nothing."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiosmtplib
import pytest
import trustme

from inbound.server import InboundServer
from penguinmails.database import create_pool
from penguinmails.verp import Verp
from tests.helpers import wait_for
from tests.inbound.conftest import (
    FBL_ADDRESS,
    REPLY_ADDRESS,
    corpus,
    send,
    sent_message,
    snapshot,
)

HARD_BOUNCE = "postfix_hard_user_unknown_5.1.1.eml"


async def test_relaying_is_refused_and_changes_nothing(pool, inbound_settings, start_inbound):
    server = await start_inbound(inbound_settings())
    original = await sent_message(pool, server_settings := inbound_settings())
    before = await snapshot(pool)

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(server.port, original.fill(corpus(HARD_BOUNCE)), "", ["victim@elsewhere.test"])
    [error] = refused.value.recipients
    assert error.code == 550 and "5.7.1" in error.message

    # A look-alike domain is somewhere else too.
    errors, _ = await send(
        server.port,
        original.fill(corpus(HARD_BOUNCE)),
        "",
        [original.return_path, "x@bounces.localhost.evil.test"],
    )
    assert list(errors) == ["x@bounces.localhost.evil.test"]
    assert server.metrics.refused.labels("relaying")._value.get() == 2
    assert server_settings.inbound.bounce_domains == []  # the default: mta.bounce_domain
    assert (await snapshot(pool))["inbound"] == before["inbound"] + 1


async def test_configured_bounce_domains_replace_the_default(pool, inbound_settings, start_inbound):
    server = await start_inbound(inbound_settings(bounce_domains=["Rp.Acme.Test."]))
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await send(server.port, b"Subject: x\r\n\r\nx\r\n", "", [FBL_ADDRESS])
    errors, _ = await send(server.port, b"Subject: x\r\n\r\nx\r\n", "", ["fbl@rp.acme.test"])
    assert errors == {}


async def test_oversized_mail_is_refused_with_552(pool, inbound_settings, start_inbound):
    server = await start_inbound(inbound_settings(max_message_size=4096))
    original = await sent_message(pool, inbound_settings())
    before = await snapshot(pool)
    big = original.fill(corpus(HARD_BOUNCE)) + b"x" * 78 + (b"\r\n" + b"x" * 78) * 100

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10)
    async with client:
        await client.ehlo()
        assert client.supports_extension("size")
        # Sent without SIZE=, so the limit is enforced on the data itself.
        await client.mail("")
        await client.rcpt(original.return_path)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(big)
    assert refused.value.code == 552
    assert await snapshot(pool) == before


async def test_sessions_past_the_limit_get_421_until_one_closes(
    pool, inbound_settings, start_inbound
):
    server = await start_inbound(inbound_settings(max_sessions=2))
    first = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10)
    second = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10)
    await first.connect()
    await second.connect()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"421 4.7.0")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        await writer.wait_closed()
        assert server.sessions == 2
    finally:
        await first.quit()
    await wait_for(lambda: server.sessions == 1, 5)
    errors, _ = await send(server.port, b"Subject: x\r\n\r\nx\r\n", "", [FBL_ADDRESS])
    assert errors == {}
    await second.quit()
    assert server.metrics.refused.labels("sessions")._value.get() == 1


@pytest.fixture(scope="module")
def inbound_ca() -> trustme.CA:
    return trustme.CA()


async def test_starttls_is_offered_with_a_certificate(
    pool, inbound_settings, start_inbound, inbound_ca, tmp_path
):
    cert = inbound_ca.issue_cert("inbound.test", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    settings = inbound_settings(tls_cert=str(cert_path), tls_key=str(key_path))
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    client_context = ssl.create_default_context()
    inbound_ca.configure_trust(client_context)

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10, start_tls=False)
    async with client:
        await client.ehlo()
        assert client.supports_extension("starttls")
        await client.starttls(tls_context=client_context)
        assert client.get_transport_info("sslcontext") is not None
        await client.sendmail("", [original.return_path], original.fill(corpus(HARD_BOUNCE)))
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", original.queue_id) == (
        "bounced"
    )


async def test_without_a_certificate_starttls_is_not_offered(inbound_settings, start_inbound):
    server = await start_inbound(inbound_settings())
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10, start_tls=False)
    async with client:
        await client.ehlo()
        assert not client.supports_extension("starttls")


def test_a_certificate_without_its_key_is_a_configuration_error(inbound_settings):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        inbound_settings(tls_cert="/etc/ssl/cert.pem")


@pytest.mark.parametrize(
    "sample", [HARD_BOUNCE, "arf_outlook_jmrp_abuse.eml", "ooo_gmail_vacation.eml"]
)
async def test_a_forged_return_path_changes_nothing(sample, pool, inbound_settings, start_inbound):
    """A `b-` address whose MAC does not verify: dropped, even though the mail quotes a real
    Message-ID of ours (a forger who knows one must not get a fallback)."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    local, _, domain = original.return_path.partition("@")
    mac = local.rsplit("-", 1)[1]
    forged_mac = ("a" if mac[0] != "a" else "b") + mac[1:]
    original.return_path = f"{local.rsplit('-', 1)[0]}-{forged_mac}@{domain}"
    other_id = f"b-{original.queue_id + 1}-{mac}@{domain}"  # a real MAC on another id
    before = await snapshot(pool)

    for rcpt in (original.return_path, other_id):
        errors, reply = await send(server.port, original.fill(corpus(sample)), "", [rcpt])
        assert errors == {} and reply.startswith("2.0.0")  # accepted and dropped

    assert await snapshot(pool) == before
    assert server.metrics.messages.labels("forged", "dropped")._value.get() == 2


async def test_a_forged_unsubscribe_address_changes_nothing(pool, inbound_settings, start_inbound):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    original.unsubscribe = original.unsubscribe.replace("u-", "u-1", 1)
    before = await snapshot(pool)
    await send(
        server.port,
        original.fill(corpus("unsubscribe_gmail_mailto.eml")),
        original.recipient,
        [original.unsubscribe],
    )
    assert await snapshot(pool) == before


async def test_unmatched_mail_is_dropped_with_nothing_changed(
    pool, inbound_settings, start_inbound, caplog
):
    caplog.set_level(logging.INFO, logger="inbound.server")
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    original.message_id = "someone-elses-id@example.test"
    before = await snapshot(pool)
    # A reply to a message that is not ours; a bounce to a catch-all with nothing of ours.
    await send(
        server.port,
        original.fill(corpus("reply_gmail_human.eml")),
        original.recipient,
        [REPLY_ADDRESS],
    )
    await send(server.port, b"Subject: hello\r\n\r\nspam\r\n", "x@spam.test", [REPLY_ADDRESS])
    await send(server.port, b"\x00\xff garbage \r\n\r\n", "", [FBL_ADDRESS])
    assert await snapshot(pool) == before
    assert server.metrics.messages.labels("unmatched", "dropped")._value.get() == 3
    drops = [r for r in caplog.records if getattr(r, "action", None) == "inbound_drop"]
    assert len(drops) == 3 and all(r.reason for r in drops)


async def test_the_same_report_twice_counts_once(pool, inbound_settings, start_inbound):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    bounce = original.fill(corpus(HARD_BOUNCE))
    reply = original.fill(corpus("reply_gmail_human.eml"))
    second_reply = reply.replace(b"CAHuman-reply-", b"CAHuman-second-reply-")

    for data, sender, rcpt in [
        (bounce, "", original.return_path),
        (reply, original.recipient, REPLY_ADDRESS),
    ] * 2 + [(second_reply, original.recipient, REPLY_ADDRESS)]:
        errors, _ = await send(server.port, data, sender, [rcpt])
        assert errors == {}

    events = await pool.fetch(
        "SELECT type, is_unique FROM events WHERE type <> 'email.sent' ORDER BY id"
    )
    assert [(e["type"], e["is_unique"]) for e in events] == [
        ("email.bounced", True),
        ("email.replied", True),
        ("email.received", True),  # the reply kept whole, once
        ("email.replied", False),  # a second, different reply counts; not unique
        ("email.received", False),
    ]
    assert await pool.fetchval("SELECT count(*) FROM inbound_emails") == 2
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1
    m = server.metrics.messages
    assert m.labels("hard_bounce", "recorded")._value.get() == 1
    assert m.labels("hard_bounce", "duplicate")._value.get() == 1
    assert m.labels("reply", "recorded")._value.get() == 2
    assert m.labels("reply", "duplicate")._value.get() == 1


async def test_a_report_for_a_message_of_another_recipient_suppresses_only_ours(
    pool, inbound_settings, start_inbound
):
    """The suppressed address is the original's recipient, whatever the report claims."""
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings, "ours@dest.test")
    crafted = original.fill(corpus(HARD_BOUNCE)).replace(b"ours@dest.test", b"ceo@victim.test")
    await send(server.port, crafted, "", [original.return_path])
    rows = await pool.fetch("SELECT email FROM suppressions")
    assert [r["email"] for r in rows] == ["ours@dest.test"]


async def test_a_database_outage_answers_451_so_the_sender_retries(database_url, inbound_settings):
    settings = inbound_settings()
    broken = await create_pool(database_url, min_size=1, max_size=1)
    await broken.close()
    server = await InboundServer(broken, settings).start()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(
                server.port,
                b"Subject: x\r\n\r\nx\r\n",
                "",
                [Verp.from_settings(settings).encode(1)],
            )
        assert refused.value.code == 451
    finally:
        await server.stop(grace=1.0)


async def test_metrics_count_messages_by_classification(pool, inbound_settings, start_inbound):
    import aiohttp

    from penguinmails.observability import ops_app, start_ops_server

    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    await send(server.port, original.fill(corpus(HARD_BOUNCE)), "", [original.return_path])
    runner = await start_ops_server(ops_app(pool, server.metrics.registry), "127.0.0.1:0")
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/metrics") as response:
                text = await response.text()
    finally:
        await runner.cleanup()
    assert (
        'penguinmails_inbound_messages_total{classification="hard_bounce",result="recorded"} 1.0'
        in text
    )
