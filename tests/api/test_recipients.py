"""To, cc and bcc (one message row per envelope recipient), reply_to, tags and metadata on
a send, and the all-or-nothing batch of sends."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.helpers import Client, assert_error, create_campaign


def send(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Acme <hello@acme.test>",
        "to": ["Ann Lee <ann@dest.test>", {"email": "bob@dest.test", "name": "Bob"}],
        "cc": "carol@dest.test",
        "bcc": ["dan@hidden.test"],
        "reply_to": "Support <help@acme.test>",
        "subject": "Hi",
        "content": {"text": "Hello"},
        "tags": ["welcome", "q3 launch"],
        "metadata": {"order": "A-17", "amount": 12.5, "vip": True, "n": 3},
    }
    body.update(changes)
    return body


async def test_each_envelope_recipient_is_its_own_message(
    client: Client, pool: asyncpg.Pool
) -> None:
    reply = await client.post("/emails/send", json=send())
    assert reply.status == 202, reply.body
    data = reply.data
    assert [(m["email"], m["kind"]) for m in data["messages"]] == [
        ("ann@dest.test", "to"),
        ("bob@dest.test", "to"),
        ("carol@dest.test", "cc"),
        ("dan@hidden.test", "bcc"),
    ]
    assert data["message_id"] == data["messages"][0]["id"] and data["suppressed"] == []
    ids = [m["id"] for m in data["messages"]]
    assert len(set(ids)) == 4 and all(i.startswith("msg_") for i in ids)
    rows = await pool.fetch(
        "SELECT recipient, to_header, cc_header, reply_to, tags, metadata FROM messages ORDER BY id"
    )
    assert [r["recipient"] for r in rows] == [m["email"] for m in data["messages"]]
    for row in rows:  # the same visible lists on every copy; the Bcc address in none of them
        assert row["to_header"] == [
            {"email": "ann@dest.test", "name": "Ann Lee"},
            {"email": "bob@dest.test", "name": "Bob"},
        ]
        assert row["cc_header"] == [{"email": "carol@dest.test", "name": ""}]
        assert row["reply_to"] == [{"email": "help@acme.test", "name": "Support"}]
        assert "hidden.test" not in str(dict(row)) or row["recipient"] == "dan@hidden.test"
        assert row["tags"] == ["welcome", "q3 launch"]
    # Each has its own status and email.sent event.
    sent = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.sent'")
    assert sent == 4

    shown = (await client.get(f"/messages/{ids[3]}")).data
    assert shown["recipient"] == "dan@hidden.test"
    assert [a["email"] for a in shown["to"]] == ["ann@dest.test", "bob@dest.test"]
    assert shown["cc"] == [{"email": "carol@dest.test", "name": ""}]
    assert shown["reply_to"] == [{"email": "help@acme.test", "name": "Support"}]
    assert shown["tags"] == ["welcome", "q3 launch"]
    assert shown["metadata"] == {"order": "A-17", "amount": 12.5, "vip": True, "n": 3}


async def test_the_single_recipient_form_is_unchanged(client: Client, pool: asyncpg.Pool) -> None:
    reply = await client.post(
        "/emails/send",
        json={"to": "ann@dest.test", "subject": "Hi", "content": {"text": "x"}},
    )
    assert reply.status == 202, reply.body
    [message] = reply.data["messages"]
    assert message == {"id": reply.data["message_id"], "email": "ann@dest.test", "kind": "to"}
    shown = (await client.get(f"/messages/{message['id']}")).data
    assert shown["to"] == [{"email": "ann@dest.test", "name": ""}]
    assert shown["cc"] == [] and shown["tags"] == [] and shown["metadata"] == {}


async def test_suppressed_recipients_are_reported(client: Client, pool: asyncpg.Pool) -> None:
    added = await client.post("/suppressions", json={"email": "Bob@dest.test"})
    assert added.status in (200, 201), added.body
    reply = await client.post("/emails/send", json=send())
    assert reply.status == 202, reply.body
    assert reply.data["suppressed"] == ["bob@dest.test"]
    # Its row exists (the MTA records it email.suppressed) but was not sent.
    sent = await pool.fetch(
        "SELECT m.recipient FROM events e JOIN messages m ON m.id = e.message_id"
        " WHERE e.type = 'email.sent' ORDER BY m.id"
    )
    assert [r["recipient"] for r in sent] == ["ann@dest.test", "carol@dest.test", "dan@hidden.test"]


async def test_recipient_validation_names_the_field(client: Client, pool: asyncpg.Pool) -> None:
    many = [f"r{i}@dest.test" for i in range(30)]
    cases = {
        "to": send(to=[]),
        "to[1].email": send(to=["ann@dest.test", "not an address"]),
        "cc[0]": send(cc=["Name <broken"]),
        "bcc[0].email": send(bcc=["ann@dest.test"]),  # already in to[0]
        "reply_to[0].email": send(reply_to={"email": "x@"}),
        "bcc": send(cc=many, bcc=[f"b{i}@dest.test" for i in range(30)]),
        "headers.Cc": send(headers={"Cc": "x@dest.test"}),
        "headers.Bcc": send(headers={"bcc": "x@dest.test"}),
        "headers.Reply-To": send(headers={"Reply-To": "x@dest.test"}),
        "tags": send(tags=[f"t{i}" for i in range(11)]),
        "tags[0]": send(tags=["bad\x01tag"]),
        "tags[1]": send(tags=["ok", "x" * 65]),
        "metadata": send(metadata={f"k{i}": i for i in range(21)}),
        "metadata.nested": send(metadata={"nested": {"a": 1}}),
        "metadata.big": send(metadata={"big": "x" * 2100}),
    }
    for field, body in cases.items():
        error = assert_error(await client.post("/emails/send", json=body), 422, "VALIDATION_ERROR")
        fields = [d["field"] for d in error["details"]]
        assert any(f.startswith(field) or f == field.split(".")[0] for f in fields), (
            field,
            error,
        )
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


def item(i: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": f"user{i}@dest.test",
        "subject": f"Message {i}",
        "content": {"text": f"Body {i}"},
        "tags": ["batch"],
        "metadata": {"i": i},
    }
    body.update(changes)
    return body


async def test_batch_of_500_in_one_transaction(client: Client, pool: asyncpg.Pool) -> None:
    messages = [item(i) for i in range(500)]
    messages[3]["cc"] = "copy@dest.test"
    reply = await client.post(
        "/emails/batch", json={"messages": messages}, headers={"Idempotency-Key": "b-1"}
    )
    assert reply.status == 202, reply.body
    results = reply.data["data"]
    assert len(results) == 500
    firsts = [r["messages"][0]["email"] for r in results]
    assert firsts == [f"user{i}@dest.test" for i in range(500)]
    assert [m["kind"] for m in results[3]["messages"]] == ["to", "cc"]
    stats = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT xmin::text) AS transactions,"
        " count(DISTINCT subject) AS subjects FROM messages"
    )
    assert stats["n"] == 501 and stats["transactions"] == 1 and stats["subjects"] == 500
    row = await pool.fetchrow(
        "SELECT subject, metadata FROM messages WHERE public_id = $1", results[42]["message_id"]
    )
    assert row["subject"] == "Message 42" and row["metadata"] == {"i": 42}

    again = await client.post(
        "/emails/batch", json={"messages": messages}, headers={"Idempotency-Key": "b-1"}
    )
    assert again.status == 202 and again.data == reply.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 501


async def test_batch_reports_invalid_items_by_index_and_writes_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    messages = [item(i) for i in range(20)]
    messages[3]["to"] = "broken"
    messages[11]["bcc"] = messages[11]["to"]
    messages[15]["content"] = {"template_id": "no_such_template"}
    reply = await client.post("/emails/batch", json={"messages": messages})
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    fields = [d["field"] for d in error["details"]]
    assert fields[0] == "messages[3].to[0]"
    assert len(fields) == 1  # pydantic stops the request before the rest are looked at

    del messages[3]
    reply = await client.post("/emails/batch", json={"messages": messages})
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    fields = [d["field"] for d in error["details"]]
    assert fields[0] == "messages[10].bcc[0].email", error
    assert any(f.startswith("messages[14].") for f in fields), error
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
    assert await pool.fetchval("SELECT count(*) FROM events") == 0

    too_many = {"messages": [item(i) for i in range(501)]}
    error = assert_error(await client.post("/emails/batch", json=too_many), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "messages"


async def test_a_campaigns_tags_and_metadata_go_to_each_of_its_messages(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await create_campaign(client, tags=["spring"], metadata={"batch": 1})
    assert made["tags"] == ["spring"] and made["metadata"] == {"batch": 1}
    changed = await client.patch(f"/campaigns/{made['id']}", json={"tags": ["spring", "eu"]})
    assert changed.data["tags"] == ["spring", "eu"] and changed.data["metadata"] == {"batch": 1}
    error = assert_error(
        await client.patch(f"/campaigns/{made['id']}", json={"metadata": {"x": [1]}}),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"].startswith("metadata")
    assert (await client.post(f"/campaigns/{made['id']}/send")).status == 202
    bulk = await client.post(
        "/emails/send-bulk",
        json={
            "campaign_id": made["id"],
            "recipients": [{"email": "cy@dest.test", "personalization": {"first_name": "Cy"}}],
        },
    )
    assert bulk.status == 202, bulk.body
    rows = await pool.fetch("SELECT recipient, tags, metadata FROM messages ORDER BY id")
    assert [r["recipient"] for r in rows] == ["ann@dest.test", "bob@dest.test", "cy@dest.test"]
    assert all(r["tags"] == ["spring", "eu"] and r["metadata"] == {"batch": 1} for r in rows)
    shown = (await client.get(f"/messages/{bulk.data['message_ids'][0]}")).data
    assert shown["tags"] == ["spring", "eu"] and shown["to"] == [
        {"email": "cy@dest.test", "name": ""}
    ]
