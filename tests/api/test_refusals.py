"""Input that used to get past the door (a 500, or a 202 for a message the MTA then refused):
each is now a 4xx naming the field, and nothing is written."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from api.routing import encode_cursor
from tests.helpers import Client, assert_error


def _send(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "news@acme.test", "name": "Acme"},
        "to": "ann@dest.test",
        "subject": "Hello",
        "content": {"html": '<p><a href="https://acme.test/x">x</a></p>', "text": "x"},
    }
    body.update(changes)
    return body


async def _refused(client: Client, pool: asyncpg.Pool, body: dict[str, Any], field: str) -> str:
    reply = await client.post("/emails/send", json=body)
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == field, error
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
    return str(error["details"][0]["message"])


async def test_nul_in_a_cursor_or_a_path_is_a_422(client: Client) -> None:
    reply = await client.get("/suppressions", params={"cursor": encode_cursor("a\x00b")})
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "cursor"
    reply = await client.delete("/suppressions/ann%00@dest.test")
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "email"
    reply = await client.get("/contacts", params={"tag": "vip\x00"})
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "tag"


async def test_deep_or_huge_personalization_is_refused(client: Client, pool: asyncpg.Pool) -> None:
    deep: Any = "x"
    for _ in range(500):
        deep = {"a": deep}
    reply = await client.post("/emails/send", json=_send(personalization=deep))
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"].startswith("personalization.a.a")
    assert "nested more than" in error["details"][0]["message"]

    nine: Any = "x"
    for _ in range(9):
        nine = {"a": nine}
    path = "personalization" + ".a" * 9
    message = await _refused(client, pool, _send(personalization=nine), path)
    assert "nested more than 8 levels" in message

    huge = {"blob": "x" * 70_000}
    reply = await client.post("/emails/send", json=_send(personalization=huge))
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "personalization"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x1c", "\x1e", "\x1f", "\x7f", "\x01"])
async def test_control_characters_in_subject_or_display_name(
    client: Client, pool: asyncpg.Pool, control: str
) -> None:
    await _refused(client, pool, _send(subject=f"Hi{control}there"), "subject")
    await _refused(
        client,
        pool,
        _send(**{"from": {"email": "news@acme.test", "name": f"A{control}"}}),
        "from.name",
    )


async def test_a_control_character_in_a_link_or_value_is_refused(
    client: Client, pool: asyncpg.Pool
) -> None:
    html = '<a href="https://acme.test/a\x1fb">x</a>'
    message = await _refused(client, pool, _send(content={"html": html}), "content.html")
    assert "U+001F" in message
    templated = _send(
        content={"html": '<a href="{{link}}">x</a>'},
        personalization={"link": "https://a.test/\x1f"},
    )
    await _refused(client, pool, templated, "personalization.link")


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "Cc",
        "BCC",
        "Subject",
        "Date",
        "Message-ID",
        "Sender",
        "Return-Path",
        "DKIM-Signature",
        "List-Unsubscribe",
        "Authentication-Results",
        "ARC-Seal",
        "Received",
    ],
)
async def test_system_owned_headers_are_refused_by_name(
    client: Client, pool: asyncpg.Pool, name: str
) -> None:
    message = await _refused(client, pool, _send(headers={name: "x"}), "headers")
    assert name in message
    campaign = {"name": "N", "subject": "S", "content": {"text": "t"}, "headers": {name: "x"}}
    reply = await client.post("/campaigns", json=campaign)
    assert name in assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["message"]


async def test_own_headers_still_pass(client: Client) -> None:
    reply = await client.post("/emails/send", json=_send(headers={"X-Order": "A-17"}))
    assert reply.status == 202, reply.body
    # A send has a reply_to field for it; a campaign still takes Reply-To as a header.
    refused = await client.post("/emails/send", json=_send(headers={"Reply-To": "a@acme.test"}))
    error = assert_error(refused, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "headers.Reply-To"
    campaign = {
        "name": "N",
        "subject": "S",
        "content": {"text": "t"},
        "headers": {"Reply-To": "a@acme.test"},
    }
    assert (await client.post("/campaigns", json=campaign)).status == 201
