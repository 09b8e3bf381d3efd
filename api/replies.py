"""Replies: what came back to the tenant's campaigns and sequences, in one inbox.

`GET /api/v1/replies` lists the mail `penguinmails inbound` kept whole for the tenant (replies
and automatic replies to its messages, and mail to its inbound address), newest first, each
with the category we read it as and, for a sequence, the sequence, enrolment and step it
answers. `GET /api/v1/replies/{id}/thread` gives the conversation it belongs to: every step
sent to that contact and every mail that came back, in order.

Categories, decided from the stored mail when it is read (so a better reading applies to old
mail too):
- `out_of_office`: an automatic reply that says so (subject or body: out of office, away,
  vacation, automatic reply, and the German, French and Spanish forms we meet most);
- `auto_reply`: any other automatic reply (RFC 3834 Auto-Submitted, a ticket system...);
- `unsubscribe_request`: a person asking to be left alone (unsubscribe, remove me, stop
  emailing, opt out, do not contact me) in their own text, above any quote; "not
  interested" is an answer, so a `reply`;
- `reply`: any other mail from a person.
Bounces are not here: they are events on the message (`email.bounced`), not mail to read.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.errors import not_found, validation_error
from api.models import ListQuery, Owned, Page, PublicId, Response
from api.routing import API, Call, decode_cursor, is_public_id, keyset_page
from penguinmails.queries import load

SQL = load("api", "replies.sql")

Category = Literal["reply", "out_of_office", "auto_reply", "unsubscribe_request"]
_OUT_OF_OFFICE = re.compile(
    r"out of (the )?office|\bOOO\b|\baway\b|vacation|holiday|automatic reply|auto[- ]?reply|"
    r"abwesenheit|nicht im büro|absence|absent|fuera de la oficina|ausente",
    re.IGNORECASE,
)
_STOP = re.compile(
    r"\bunsubscribe\b|remove me|take me off|stop (e-?mailing|sending|contacting)|opt[- ]?out|"
    r"don'?t (e-?mail|contact|write to) me|do not (e-?mail|contact) me",
    re.IGNORECASE,
)
_QUOTE = re.compile(r"^(>|On .{0,200} wrote:|-----Original Message-----)", re.MULTILINE)


def own_text(text: str | None) -> str:
    """A reply's own words: its text above the quote of what it answers."""
    return _QUOTE.split(text or "", maxsplit=1)[0]


def category(auto: bool, subject: str, text: str | None) -> Category:
    """What a reply is, read from its subject and its own text (the quote below it aside)."""
    own = own_text(text)[:2000]
    if auto:
        return "out_of_office" if _OUT_OF_OFFICE.search(f"{subject}\n{own}") else "auto_reply"
    if _STOP.search(f"{subject}\n{own}"):
        return "unsubscribe_request"
    return "reply"


class RepliesQuery(ListQuery):
    category: Category | None = Field(default=None, description="Only replies of this category.")
    sequence_id: PublicId | None = Field(
        default=None, description="Only this sequence's (seq_...)."
    )


class Reply(Owned):
    id: str = Field(description="The mail, as GET /api/v1/inbound/{id} reads it whole.")
    category: Category
    from_: str = Field(alias="from")
    subject: str
    received_at: datetime
    message_id: str | None = Field(description="The message of ours it answers (msg_...).")
    campaign_id: str | None
    sequence_id: str | None
    enrollment_id: str | None
    step: int | None = Field(description="The sequence step it answers.")
    snippet: str = Field(description="The start of its own text, the quote left out.")


class ThreadEntry(Response):
    direction: Literal["sent", "received"]
    id: str = Field(description="A msg_ we sent, or an inb_ that came back.")
    step: int | None
    subject: str
    party: str = Field(description="Who it went to, or who it came from.")
    at: datetime
    status: str = Field(description="A sent message's status; received: reply or auto_reply.")


class Thread(Owned):
    reply_id: str
    entries: list[ThreadEntry]


@API.route(
    "GET",
    "/replies",
    summary="Replies to your campaigns and sequences, newest first, with their category",
    tag="Inbound",
    query=RepliesQuery,
    response=Page[Reply],
    tier="starter",
)
async def list_replies(call: Call[None, RepliesQuery]) -> Page[Reply]:
    query = call.query
    if query.sequence_id is not None and not is_public_id(query.sequence_id, "seq"):
        raise validation_error([{"field": "sequence_id", "message": "must be a seq_ id"}])
    # A category is decided on read, so a filtered page reads ahead until it is full (at
    # most ten pages' worth), then says where to go on.
    items: list[Any] = []
    cursor = decode_cursor(query.cursor, numeric=False)
    for _ in range(10):
        rows = await call.pool.fetch(
            SQL["list_replies"],
            call.principal.tenant_id,
            cursor,
            query.limit + 1,
            query.sequence_id,
        )
        for row in rows:
            if query.category is None or _category(row) == query.category:
                items.append(row)
        if query.category is None or len(items) > query.limit or len(rows) <= query.limit:
            break
        cursor = rows[-1]["id"]
    return keyset_page(Page[Reply], items, query.limit, _reply)


@API.route(
    "GET",
    "/replies/{id}/thread",
    summary="The conversation a reply belongs to: what was sent and what came back, in order",
    tag="Inbound",
    response=Thread,
    errors=(404,),
    tier="starter",
)
async def reply_thread(call: Call[None, None]) -> Thread:
    reply_id = call.path_id("inb", "Reply")
    rows = await call.pool.fetch(SQL["reply_thread"], call.principal.tenant_id, reply_id)
    if not rows:
        raise not_found("Reply")
    return Thread(reply_id=reply_id, entries=[ThreadEntry.model_validate(dict(r)) for r in rows])


def _category(row: Any) -> Category:
    return category(row["auto"], row["subject"], row["text_body"])


def _reply(row: Any) -> Reply:
    own = own_text(row["text_body"])
    return Reply.model_validate(
        {
            "id": row["id"],
            "category": _category(row),
            "from": row["from_email"],
            "subject": row["subject"],
            "received_at": row["received_at"],
            "message_id": row["message_id"],
            "campaign_id": row["campaign_id"],
            "sequence_id": row["sequence_id"],
            "enrollment_id": row["enrollment_id"],
            "step": row["step"],
            "snippet": " ".join(own.split())[:200],
        }
    )
