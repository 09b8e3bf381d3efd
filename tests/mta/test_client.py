"""The delivery client against real servers: Postfix's smtpd (which enforces RFC 2920's
pipelining rules and refuses bare LF) and aiosmtpd, plus a scripted peer for the replies no
real server sends (bare LF, over-long, a disconnect at an exact byte)."""

from __future__ import annotations

import asyncio
import re

import pytest

from mta.client import (
    ConnectionLost,
    NotAscii,
    NotSent,
    ProtocolError,
    SMTPClient,
    Timeouts,
    TransactionFailed,
    WireMessage,
    dot_stuff,
    wire_message,
)
from tests.helpers import wait_for
from tests.postfix import (
    DATA_REFUSED_SENDER,
    DEFERRED_RECIPIENT,
    REFUSED_RECIPIENT,
    REFUSED_SENDER,
    Postfix,
)

TIMEOUTS = Timeouts(connect=5, command=5, data=10)
MESSAGE = b"From: a@sender.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"


async def _client(port: int, **kwargs: float) -> SMTPClient:
    timeouts = Timeouts(**{**TIMEOUTS.__dict__, **kwargs})
    return await SMTPClient.connect(
        "127.0.0.1", port, local_hostname="client.test", timeouts=timeouts
    )


def _queued(postfix: Postfix) -> int:
    return len(re.findall(r"postfix/cleanup\[\d+\]: \w+: message-id=", postfix.log()))


# -- the data path ----------------------------------------------------------------------------


def test_dot_stuffing_without_a_regex():
    assert dot_stuff(b".a\r\n..b\r\nc.\r\n.\r\n") == b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


def test_bare_line_ends_are_normalised_before_the_wire():
    assert wire_message(b"a\r\nb\r\n") == b"a\r\nb\r\n"  # the composer's output: as is
    assert wire_message(b"a\nb\rc\r\n.\n") == b"a\r\nb\r\nc\r\n.\r\n"
    assert wire_message(b"no end") == b"no end\r\n"
    # The composer's output, CRLF-only by construction, goes as it is without a scan.
    composed = WireMessage(b"a\r\nb\r\n")
    assert wire_message(composed) is composed


# -- Postfix ------------------------------------------------------------------------------------


async def test_postfix_offers_pipelining_and_chunking_and_one_write_carries_a_message(postfix):
    client = await _client(postfix.port)
    try:
        assert client.pipelining and client.chunking
        before = _queued(postfix)
        for n in range(3):
            delivery = await client.send("a@sender.test", [f"b{n}@dest.test"], MESSAGE)
            assert delivery[f"b{n}@dest.test"].code == 250, delivery
    finally:
        await client.quit()
    await wait_for(lambda: _queued(postfix) >= before + 3)
    assert "synchronization" not in postfix.log()
    assert "improper command pipelining" not in postfix.log()


async def test_postfix_pipelining_with_data_and_end_of_data_leading_the_next_group(postfix):
    client = await _client(postfix.pipelining_port)
    try:
        assert client.pipelining and not client.chunking
        submitted = []
        for n in range(5):
            submitted.append(await client.submit("a@sender.test", [f"p{n}@dest.test"], MESSAGE))
            # The end of data is written, its reply not yet read: the connection takes the
            # next transaction now, and Postfix (which disconnects a client that pipelines
            # where RFC 2920 forbids it) accepts that.
            assert not submitted[-1].done
        for n, sub in enumerate(submitted):
            assert (await sub.delivery())[f"p{n}@dest.test"].code == 250
    finally:
        await client.quit()
    assert "synchronization" not in postfix.log()


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_a_refused_recipient_among_several_fails_only_that_recipient(postfix, chunking):
    client = await _client(postfix.port if chunking else postfix.pipelining_port)
    assert client.chunking is chunking
    try:
        recipients = ["one@dest.test", REFUSED_RECIPIENT, DEFERRED_RECIPIENT, "two@dest.test"]
        delivery = await client.send("a@sender.test", recipients, MESSAGE)
        assert delivery["one@dest.test"].code == 250
        assert delivery["two@dest.test"].code == 250
        assert delivery[REFUSED_RECIPIENT].code == 550
        assert delivery[REFUSED_RECIPIENT].enhanced == "5.1.1"
        assert delivery[DEFERRED_RECIPIENT].code == 450
        # and the connection goes on
        assert (await client.send("a@sender.test", ["x@dest.test"], MESSAGE))[
            "x@dest.test"
        ].accepted
    finally:
        await client.quit()


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_mail_refused_fails_every_recipient_and_the_session_goes_on(postfix, chunking):
    client = await _client(postfix.port if chunking else postfix.pipelining_port)
    assert client.chunking is chunking
    try:
        delivery = await client.send(REFUSED_SENDER, ["a@dest.test", "b@dest.test"], MESSAGE)
        assert {r.code for r in delivery.replies.values()} == {550}
        assert delivery["a@dest.test"].enhanced == "5.7.1"
        assert (await client.send("ok@sender.test", ["c@dest.test"], MESSAGE))[
            "c@dest.test"
        ].accepted
    finally:
        await client.quit()
    assert "synchronization" not in postfix.log()


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_data_refused_after_accepted_recipients(postfix, chunking):
    client = await _client(postfix.port if chunking else postfix.pipelining_port)
    assert client.chunking is chunking
    try:
        delivery = await client.send(DATA_REFUSED_SENDER, ["a@dest.test", "b@dest.test"], MESSAGE)
        assert {r.code for r in delivery.replies.values()} == {554}
        # the next transaction starts clean (RSET pipelined in front of it)
        assert (await client.send("ok@sender.test", ["c@dest.test"], MESSAGE))[
            "c@dest.test"
        ].accepted
    finally:
        await client.quit()
    assert "synchronization" not in postfix.log()


async def test_postfix_refuses_a_bare_lf_that_our_data_path_never_sends(postfix):
    # What the client's normalisation protects against: Postfix refuses bare LF outright
    # (smtpd_forbid_bare_newline), our client turns it into CRLF first and gets a 250.
    client = await _client(postfix.port)
    try:
        delivery = await client.send("a@sender.test", ["lf@dest.test"], b"Subject: x\n\nbody\n.\n")
        assert delivery["lf@dest.test"].code == 250
    finally:
        await client.quit()


async def test_control_characters_and_path_breakers_are_refused_before_anything_is_written(
    postfix,
):
    client = await _client(postfix.port)
    try:
        for bad in ("a@dest.test>\r\nRCPT TO:<b@dest.test", "a\x00@dest.test", "a\n@dest.test"):
            with pytest.raises(ValueError, match="control character"):
                await client.send("a@sender.test", [bad], MESSAGE)
            with pytest.raises(ValueError, match="control character"):
                await client.send(bad, ["x@dest.test"], MESSAGE)
        for bad in ("a@dest.test> NOTIFY=NEVER", "a b@dest.test", "<a@dest.test"):
            with pytest.raises(ValueError, match="in address"):
                await client.send("a@sender.test", [bad], MESSAGE)
        assert (await client.send("a@sender.test", ["y@dest.test"], MESSAGE))[
            "y@dest.test"
        ].accepted
    finally:
        await client.quit()


# -- aiosmtpd with injected faults ----------------------------------------------------------


def _mode(client: SMTPClient, mode: str) -> SMTPClient:
    """aiosmtpd reads pipelined commands in order but advertises no PIPELINING: "pipelined"
    makes the client pipeline anyway, "stepwise" is what it does on its own."""
    assert not client.pipelining and not client.chunking
    if mode == "pipelined":
        client.extensions["pipelining"] = ""
    return client


MODES = pytest.mark.parametrize("mode", ["stepwise", "pipelined"])


@MODES
async def test_aiosmtpd_several_recipients_byte_exact(smtp_peer, mode):
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        delivery = await client.send("a@sender.test", ["a@dest.test", "b@dest.test"], MESSAGE)
        assert {r.code for r in delivery.replies.values()} == {250}
    finally:
        await client.quit()
    [received] = smtp_peer.received
    assert received.rcpt_tos == ["a@dest.test", "b@dest.test"]
    assert received.data == MESSAGE  # dot-stuffing undone by the server: byte-exact


@MODES
async def test_rcpt_refused_among_several_at_aiosmtpd(smtp_peer, mode):
    smtp_peer.fault("RCPT", 550, "5.1.1 no such user", match="bad")
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        delivery = await client.send("a@sender.test", ["a@dest.test", "bad@dest.test"], MESSAGE)
    finally:
        await client.quit()
    assert delivery["a@dest.test"].code == 250
    assert delivery["bad@dest.test"].code == 550
    assert smtp_peer.received[0].rcpt_tos == ["a@dest.test"]


@MODES
async def test_421_mid_pipeline_ends_the_session(smtp_peer, mode):
    smtp_peer.fault("RCPT", 421, "4.3.2 shutting down")
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        delivery = await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
        assert delivery["a@dest.test"].code == 421
        assert not client.usable  # the server is closing: no next transaction here
    finally:
        await client.quit()
    assert not smtp_peer.received


@MODES
async def test_disconnect_after_the_content_is_unknown_not_refused(smtp_peer, mode):
    smtp_peer.fault("DATA", disconnect=True)
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        with pytest.raises(TransactionFailed) as failed:
            await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
        assert failed.value.content_sent  # may have been delivered: retry, at least once
        assert not isinstance(failed.value, NotSent)
    finally:
        await client.quit()


@MODES
async def test_disconnect_at_mail_is_not_sent(smtp_peer, mode):
    smtp_peer.fault("MAIL", disconnect=True)
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        with pytest.raises(NotSent):
            await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    finally:
        await client.quit()


# -- scripted peer: the replies no real server sends ------------------------------------------


async def _ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caps: bytes) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    await reader.readuntil(b"\r\n")
    writer.write(b"250-scripted\r\n" + caps)


async def test_a_reply_split_across_segments_and_commands_is_read_in_order(scripted):
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250-PIPELINING\r\n250 CHUNKING\r\n")
        await reader.readuntil(b"LAST\r\n")
        await reader.readexactly(len(wire_message(MESSAGE)))
        replies = b"250 2.1.0 ok\r\n250-2.1.5 first\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n"
        for i in range(0, len(replies), 3):  # three bytes a segment
            writer.write(replies[i : i + 3])
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.readuntil(b"\r\n")  # QUIT
        writer.write(b"221 bye\r\n")

    client = await _client(await scripted(script))
    delivery = await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    await client.quit()
    assert delivery["a@dest.test"].code == 250
    assert delivery["a@dest.test"].message == "2.0.0 queued"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"250 2.1.0 ok\n", "bare LF"),
        (b"250 2.1.0 " + b"x" * 5000 + b"\r\n", "longer than"),
        (b"250-2.1.0 ok\r\n" * 2000, "longer than"),
        (b"250-2.1.0 ok\r\n550 5.0.0 no\r\n", "different codes"),
        (b"hello\r\n", "malformed"),
    ],
    ids=["bare-lf", "long-line", "long-reply", "mixed-codes", "garbage"],
)
async def test_malformed_replies_end_the_session_as_a_temporary_failure(scripted, reply, error):
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250-PIPELINING\r\n250 CHUNKING\r\n")
        await reader.readuntil(b"\r\n")
        writer.write(reply)
        await writer.drain()
        await reader.read()

    client = await _client(await scripted(script))
    with pytest.raises(TransactionFailed) as failed:  # BDAT: the content went with MAIL
        await client.send("a@sender.test", ["a@dest.test"], b"x\r\n")
    assert isinstance(failed.value.cause, ProtocolError)
    assert error in str(failed.value)
    assert not client.usable
    client.close()


async def test_disconnect_mid_bdat_is_unknown(scripted):
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250-PIPELINING\r\n250 CHUNKING\r\n")
        await reader.readuntil(b"LAST\r\n")
        await reader.readexactly(10)  # part of the chunk, then gone

    client = await _client(await scripted(script))
    with pytest.raises(TransactionFailed) as failed:
        await client.send("a@sender.test", ["a@dest.test"], MESSAGE * 1000)
    assert failed.value.content_sent
    client.close()


async def test_disconnect_after_end_of_data_before_the_reply_is_unknown(scripted):
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")  # the whole message: then hang up

    client = await _client(await scripted(script))
    with pytest.raises(TransactionFailed) as failed:
        await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    assert failed.value.content_sent and not isinstance(failed.value, NotSent)
    client.close()


async def test_a_bare_lf_greeting_is_refused(scripted):
    async def script(reader, writer):
        writer.write(b"220 scripted\n")
        await reader.read()

    with pytest.raises((ProtocolError, ConnectionLost)):
        await _client(await scripted(script))


async def test_text_after_the_starttls_go_ahead_is_refused(scripted, tls_peer_context):
    # A man in the middle that appends a reply to STARTTLS's 220 in clear hopes the client
    # reads it after the handshake as the server's (the STARTTLS injection): we must not.
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250 STARTTLS\r\n")
        await reader.readuntil(b"\r\n")
        writer.write(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        await reader.read()

    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = await _client(await scripted(script))
    with pytest.raises((ProtocolError, ConnectionLost, OSError, TimeoutError)):
        await client.starttls(context)
    assert not client.usable
    client.close()


async def test_a_non_ascii_address_needs_smtputf8(postfix, smtp_peer):
    client = await _client(postfix.port)  # Postfix offers SMTPUTF8
    try:
        delivery = await client.send("a@sender.test", ["jürgen@dest.test"], MESSAGE)
        assert delivery["jürgen@dest.test"].code == 250
    finally:
        await client.quit()
    client = await _client(smtp_peer.port)  # aiosmtpd, as configured here, does not
    try:
        with pytest.raises(NotAscii):
            await client.send("a@sender.test", ["jürgen@dest.test"], MESSAGE)
        assert client.usable  # refused before anything was written
    finally:
        await client.quit()
    assert smtp_peer.received == []


async def test_a_slow_reply_trips_the_command_timeout_before_any_content(smtp_peer):
    smtp_peer.fault("RCPT", delay=2.0)
    client = await _client(smtp_peer.port, command=0.3)
    with pytest.raises(NotSent):
        await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    assert not client.usable
    client.close()


async def test_a_slow_end_of_data_reply_trips_the_data_timeout_unknown(smtp_peer):
    smtp_peer.fault("DATA", delay=2.0)
    client = await _client(smtp_peer.port, data=0.3)
    with pytest.raises(TransactionFailed) as failed:
        await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    assert failed.value.content_sent
    client.close()


@MODES
async def test_every_recipient_refused_then_the_next_transaction_starts_clean(smtp_peer, mode):
    smtp_peer.fault("RCPT", 550, "5.1.1 no such user", times=2)
    client = _mode(await _client(smtp_peer.port), mode)
    try:
        refused = await client.send("a@sender.test", ["x@dest.test", "y@dest.test"], MESSAGE)
        assert {r.code for r in refused.replies.values()} == {550}
        accepted = await client.send("b@sender.test", ["z@dest.test"], MESSAGE)
        assert accepted["z@dest.test"].code == 250
    finally:
        await client.quit()
    [received] = smtp_peer.received
    assert (received.mail_from, received.rcpt_tos) == ("b@sender.test", ["z@dest.test"])


async def test_helo_when_ehlo_is_not_understood(scripted):
    async def script(reader, writer):
        writer.write(b"220 old server\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"EHLO ")
        writer.write(b"502 5.5.1 what?\r\n")
        assert (await reader.readuntil(b"\r\n")) == b"HELO client.test\r\n"
        writer.write(b"250 old server\r\n")
        for expected, reply in (
            (b"MAIL FROM:<a@sender.test>\r\n", b"250 ok\r\n"),
            (b"RCPT TO:<a@dest.test>\r\n", b"250 ok\r\n"),
            (b"DATA\r\n", b"354 go\r\n"),
        ):
            assert await reader.readuntil(b"\r\n") == expected  # one command at a time
            writer.write(reply)
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued\r\n")
        await reader.readuntil(b"\r\n")
        writer.write(b"221 bye\r\n")

    client = await _client(await scripted(script))
    assert client.extensions == {}
    delivery = await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    await client.quit()
    assert delivery["a@dest.test"].code == 250


async def test_a_refused_rset_ends_the_session_after_its_transaction_under_bdat(scripted):
    async def script(reader, writer):
        await _ehlo(reader, writer, b"250-PIPELINING\r\n250 CHUNKING\r\n")
        await reader.readuntil(b"LAST\r\n")
        await reader.readexactly(len(wire_message(MESSAGE)))
        writer.write(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
        await reader.readuntil(b"LAST\r\n")  # RSET, MAIL, RCPT, BDAT in one group
        await reader.readexactly(len(wire_message(MESSAGE)))
        writer.write(b"502 5.5.1 no RSET here\r\n250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n")
        await reader.readuntil(b"\r\n")
        writer.write(b"221 bye\r\n")

    client = await _client(await scripted(script))
    refused = await client.send("a@sender.test", ["a@dest.test"], MESSAGE)
    assert refused["a@dest.test"].code == 550
    delivered = await client.send("a@sender.test", ["b@dest.test"], MESSAGE)
    assert delivered["b@dest.test"].code == 250  # what the replies say stands
    assert not client.usable  # but nothing more goes on a session in an unknown state
    await client.quit()
