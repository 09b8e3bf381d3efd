"""End to end: the MTA delivers, the bounce or complaint comes back over SMTP, and the MTA
does not send to that address again."""

from __future__ import annotations

import re

import pytest

from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import wait_for
from tests.inbound.conftest import SentMessage, corpus, send


async def _status(pool, queue_id: int) -> str:
    return await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id)


@pytest.mark.parametrize(
    ("sample", "rcpt", "reason"),
    [
        ("gmail_hard_5.1.1.eml", "RETURN_PATH", "hard_bounce"),
        ("qmail_hard_5.1.1.eml", "RETURN_PATH", "hard_bounce"),
        ("arf_yahoo_abuse.eml", "FBL_ADDRESS", "complaint"),
        ("arf_outlook_jmrp_abuse.eml", "FBL_ADDRESS", "complaint"),
        ("unsubscribe_gmail_mailto.eml", "UNSUBSCRIBE", "unsubscribed"),
    ],
)
async def test_the_mta_stops_sending_to_an_address_that_bounced_hard_or_complained(
    sample, rcpt, reason, pool, make_settings, smtp_peer, start_worker, start_inbound
):
    settings = make_settings(
        mta={"routes": {"dest.test": smtp_peer.hop}},
        inbound={"listen": "127.0.0.1:0", "metrics_listen": ""},
    )
    server = await start_inbound(settings)
    tenant = await ensure_tenant(pool, "acme")

    async def queue(recipient: str) -> int:
        draft = Draft(
            from_email="news@acme.test", subject="Hello", text="Hi there", recipients=[recipient]
        )
        [queue_id] = await enqueue(pool, tenant, draft)
        return queue_id

    worker = await start_worker(settings)
    first = await queue("Someone@dest.test")
    await wait_for(lambda: smtp_peer.received)
    await wait_for(lambda: _is(pool, first, "sent"))

    # What came back is built from what the peer actually received.
    delivered = smtp_peer.received[0].message
    [mailto] = re.findall(r"<mailto:([^>?]+)", delivered["List-Unsubscribe"])
    original = SentMessage(
        first,
        delivered["Message-ID"].strip("<>"),
        "Someone@dest.test",
        smtp_peer.received[0].mail_from,
        mailto,
    )
    sender = "" if rcpt == "RETURN_PATH" else "feedback@provider.test"
    errors, _ = await send(
        server.port, original.fill(corpus(sample)), sender, [original.envelope(rcpt)]
    )
    assert errors == {}
    [suppression] = await pool.fetch("SELECT email, reason FROM suppressions")
    assert tuple(suppression) == ("someone@dest.test", reason)

    again = await queue("someone@DEST.test")
    other = await queue("other@dest.test")
    await wait_for(lambda: _is(pool, again, "suppressed"))
    await wait_for(lambda: _is(pool, other, "sent"))
    await worker.stop()

    assert [r.rcpt_tos for r in smtp_peer.received] == [["Someone@dest.test"], ["other@dest.test"]]


async def _is(pool, queue_id: int, status: str) -> bool:
    return await _status(pool, queue_id) == status
