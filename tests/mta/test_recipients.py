"""A send to To, Cc and Bcc recipients through the real worker to a real SMTP peer: one
message per envelope recipient, each showing the same To and Cc, none showing a Bcc, every
one parsing without defects and DKIM-verifying."""

from __future__ import annotations

import dkim as dkimpy
import pytest

from mta.domains import add_domain, show_domain
from penguinmails.messages import Address, Draft, enqueue, ensure_tenant
from tests.helpers import dnsfunc_for, wait_for
from tests.mta.test_compose import parse

pytestmark = pytest.mark.usefixtures("ed25519_for_dkimpy")


async def test_to_cc_and_bcc_each_get_the_message_and_no_one_sees_the_bcc(
    pool, make_settings, smtp_peer, start_worker
):
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop, "hidden.test": smtp_peer.hop}}
    )
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", algorithm="both")
        records = await show_domain(conn, "acme.test")
    tenant = await ensure_tenant(pool, "acme")
    to = [Address("ann@dest.test", "Ann Lée"), Address("bob@dest.test", "Smith, Bob")]
    cc = [Address("carol@dest.test")]
    envelope = ["ann@dest.test", "bob@dest.test", "carol@dest.test", "dan@hidden.test"]
    ids = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="Hello all",
            recipients=envelope,
            text="Hi",
            to_header=to,
            cc_header=cc,
            reply_to=[Address("help@acme.test", "Help desk")],
            headers={"Reply-To": "ignored@acme.test", "X-Order": "A-17"},
        ),
    )
    assert len(ids) == 4
    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 4)
    await worker.stop()

    dns = dnsfunc_for(*records)
    by_rcpt = {}
    for received in smtp_peer.received:
        [rcpt] = received.rcpt_tos  # one envelope recipient per message
        by_rcpt[rcpt] = received
        assert b"hidden.test" not in received.data  # the Bcc is in no copy, not even its own
        assert dkimpy.verify(received.data, dnsfunc=dns)
        assert dkimpy.DKIM(received.data).verify(idx=1, dnsfunc=dns)
        message = parse(received.data)  # no defects anywhere
        assert "Bcc" not in message
        assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
            ("Ann Lée", "ann@dest.test"),
            ("Smith, Bob", "bob@dest.test"),
        ]
        assert [a.addr_spec for a in message["Cc"].addresses] == ["carol@dest.test"]
        assert message.get_all("Reply-To") == ["Help desk <help@acme.test>"]
        assert message["X-Order"] == "A-17"
    assert sorted(by_rcpt) == sorted(envelope)
    message_ids = {parse(r.data)["Message-ID"] for r in smtp_peer.received}
    assert len(message_ids) == 4  # each its own message, with its own id and status
