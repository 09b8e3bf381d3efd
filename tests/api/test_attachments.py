"""Attachments on POST /emails/send: stored once, and every refusal a 422 naming its field."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import asyncpg
import pytest

from penguinmails.attachments import MAX_ATTACHMENT_BYTES
from tests.api.test_sends import single
from tests.helpers import Client, assert_error

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
PDF = b"%PDF-1.7\n" + bytes(range(256))


def attachment(content: bytes = PDF, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": "report.pdf",
        "content": base64.b64encode(content).decode(),
        "content_type": "application/pdf",
    }
    item.update(changes)
    return item


async def refused(client: Client, attachments: list[dict[str, Any]], field: str) -> str:
    reply = await client.post("/emails/send", json=single(attachments=attachments))
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == field, error
    return str(error["details"][0]["message"])


async def test_a_send_with_attachments_stores_the_bytes_once(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    body = single(
        content={"html": '<p>Hi {{name}} <img src="cid:logo"></p>'},
        attachments=[
            attachment(),
            attachment(
                PNG,
                filename="logo.png",
                content_type="image/png",
                disposition="inline",
                content_id="logo",
            ),
        ],
    )
    first = await client.post("/emails/send", json=body)
    assert first.status == 202, first.body
    second = await client.post("/emails/send", json=single(attachments=[attachment()]))
    assert second.status == 202
    stored = await pool.fetch(
        "SELECT sha256, size, content FROM attachments WHERE tenant_id = $1 ORDER BY id", tenant_id
    )
    assert [bytes(r["content"]) for r in stored] == [PDF, PNG]  # the second send reused PDF
    assert bytes(stored[0]["sha256"]) == hashlib.sha256(PDF).digest()
    row = await pool.fetchrow(
        "SELECT attachments FROM messages WHERE public_id = $1", first.data["message_id"]
    )
    assert [(r["filename"], r["disposition"], r["content_id"]) for r in row["attachments"]] == [
        ("report.pdf", "attachment", None),
        ("logo.png", "inline", "logo"),
    ]


async def test_attachment_validation(client: Client) -> None:
    cases = {
        "attachments[0].content": [dict(attachment(), content="not base64!")],
        "attachments[0].filename": [attachment(filename="../../etc/passwd")],
        "attachments[1].filename": [attachment(), attachment(filename="a\x07.pdf")],
        "attachments[0].content_type": [attachment(content_type="application/PDF; x=1")],
        "attachments[0].disposition": [attachment(disposition="hidden")],
        "attachments[0].content_id": [attachment(disposition="inline")],
        "attachments": [attachment()] * 21,
    }
    for field, items in cases.items():
        await refused(client, items, field)


async def test_a_declared_type_must_match_the_bytes(client: Client) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 20
    message = await refused(
        client,
        [attachment(jpeg, filename="x.png", content_type="image/png")],
        "attachments[0].content",
    )
    assert "image/png" in message
    await refused(
        client, [attachment(b"hello", content_type="application/pdf")], "attachments[0].content"
    )


# The test client sends the megabytes as one bytes object, which aiohttp warns about.
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_size_limits(client: Client) -> None:
    big = b"\x00" * (MAX_ATTACHMENT_BYTES + 1)
    message = await refused(
        client,
        [attachment(big, content_type="application/octet-stream")],
        "attachments[0].content",
    )
    assert str(MAX_ATTACHMENT_BYTES) in message
    # Each under the limit, together over 25 MB: the one that crosses it is named.
    nine = attachment(b"\x00" * 9_000_000, content_type="application/octet-stream")
    message = await refused(client, [nine, nine, nine], "attachments[2].content")
    assert "together" in message


async def test_executables_are_refused_unless_the_account_allows_them(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    exe = attachment(b"MZ\x90\x00" + b"\x00" * 60, filename="notes.txt", content_type="text/plain")
    for item in (
        exe,
        attachment(b"echo hi", filename="run.BAT", content_type="text/plain"),
        attachment(b"x", filename="setup.exe. ", content_type="application/octet-stream"),
    ):
        message = await refused(client, [attachment(), item], "attachments[1].content")
        assert "executable" in message
    # Set on the account (its live row); the test-mode key follows it.
    await pool.execute(
        "UPDATE tenants SET allow_executable_attachments = true"
        " WHERE id = (SELECT coalesce(live_tenant_id, id) FROM tenants WHERE id = $1)",
        tenant_id,
    )
    reply = await client.post("/emails/send", json=single(attachments=[exe]))
    assert reply.status == 202, reply.body
