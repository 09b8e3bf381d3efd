"""GET /api/v1/replies: what came back to a message, through the real inbound server, read
with the category it is and the thread it belongs to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from api.replies import category
from inbound.server import InboundServer
from penguinmails.config import Settings
from penguinmails.messages import Draft, enqueue
from tests.helpers import Client, assert_error
from tests.inbound.conftest import REPLY_ADDRESS, send


@pytest.mark.parametrize(
    ("auto", "subject", "text", "expected"),
    [
        (False, "Re: Pricing", "Sounds good, call me Tuesday.", "reply"),
        (False, "Re: Pricing", "Please remove me from your list.", "unsubscribe_request"),
        (False, "Re: Pricing", "Not interested, thanks.", "reply"),  # an answer, not a request
        (False, "Re: Pricing", "Do not contact me again.", "unsubscribe_request"),
        # Only its own text counts: the quote of our mail below may say anything.
        (False, "Re: Hi", "Yes!\n\nOn Mon, Ann wrote:\n> to unsubscribe click here", "reply"),
        (True, "Out of Office: Re: Pricing", "I am away until Monday.", "out_of_office"),
        (True, "Automatische Antwort", "Ich bin nicht im Büro.", "out_of_office"),
        (True, "Ticket #4411 received", "We got your message.", "auto_reply"),
    ],
)
def test_a_reply_s_category_is_read_from_its_own_words(
    auto: bool, subject: str, text: str, expected: str
) -> None:
    assert category(auto, subject, text) == expected


@pytest.fixture
async def inbound(pool: asyncpg.Pool, make_settings: Callable[..., Settings]) -> Any:
    settings = make_settings(inbound={"listen": "127.0.0.1:0", "metrics_listen": ""})
    server = await InboundServer(pool, settings).start()
    yield server
    await server.stop(grace=1.0)


def _mail(rfc_id: str, n: int, subject: str, text: str, auto: bool = False) -> bytes:
    extra = "Auto-Submitted: auto-replied\r\n" if auto else ""
    return (
        "From: Sam <sam@dest.test>\r\n"
        f"To: <{REPLY_ADDRESS}>\r\n"
        f"Subject: {subject}\r\n"
        f"In-Reply-To: <{rfc_id}>\r\n"
        f"Message-ID: <answer-{n}@dest.test>\r\n"
        f"{extra}"
        "\r\n"
        f"{text}\r\n"
    ).encode()


async def test_replies_are_listed_by_category_with_their_thread(
    client: Client, tenant_id: int, pool: asyncpg.Pool, inbound: InboundServer
) -> None:
    [queue_id] = await enqueue(
        pool,
        tenant_id,
        Draft(
            sandbox=True,
            from_email="news@acme.test",
            subject="Pricing",
            text="Hi",
            recipients=["sam@dest.test"],
        ),
    )
    row = await pool.fetchrow(
        "UPDATE messages SET status = 'sent', sent_at = now() WHERE id = $1"
        " RETURNING public_id, message_id",
        queue_id,
    )
    mails = [
        _mail(row["message_id"], 1, "Re: Pricing", "Tell me more."),
        _mail(row["message_id"], 2, "Out of Office: Re: Pricing", "Away until May.", auto=True),
        _mail(row["message_id"], 3, "Re: Pricing", "Please unsubscribe me.\r\n\r\n> Hi"),
    ]
    for mail in mails:
        errors, _ = await send(inbound.port, mail, "sam@dest.test", [REPLY_ADDRESS])
        assert errors == {}

    page = (await client.get("/replies")).data
    assert [(i["category"], i["message_id"]) for i in page["items"]] == [
        ("unsubscribe_request", row["public_id"]),
        ("out_of_office", row["public_id"]),
        ("reply", row["public_id"]),
    ]
    assert page["items"][0]["snippet"] == "Please unsubscribe me."
    assert page["items"][0]["sequence_id"] is None and page["items"][0]["livemode"] is False
    ooo = (await client.get("/replies", params={"category": "out_of_office", "limit": "1"})).data
    assert [i["subject"] for i in ooo["items"]] == ["Out of Office: Re: Pricing"]
    assert ooo["has_more"] is False

    thread = (await client.get(f"/replies/{page['items'][0]['id']}/thread")).data
    assert [(e["direction"], e["status"]) for e in thread["entries"]] == [
        ("sent", "sent"),
        ("received", "reply"),
        ("received", "auto_reply"),
        ("received", "reply"),
    ]
    assert thread["entries"][0]["id"] == row["public_id"]
    assert_error(await client.get("/replies/inb_" + "0" * 32 + "/thread"), 404, "NOT_FOUND")
    error = assert_error(
        await client.get("/replies", params={"category": "spam"}), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "category"
