"""Attachments in the composed message: MIME shape, byte-exact content, DKIM, end to end.

Parsed back with the standard library (no defects allowed), verified with dkimpy; the end
to end test queues a send to several recipients through enqueue and has the real worker
deliver it to a real SMTP peer.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from typing import Any

import dkim as dkimpy
import pytest

from mta import compose as composing
from mta import dkim, queue
from mta.compose import ComposeError
from mta.domains import add_domain, show_domain
from penguinmails.attachments import Attachment
from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.helpers import dnsfunc_for, wait_for
from tests.mta.test_compose import (
    CORPUS_DNS,
    CORPUS_KEYS,
    LINKS,
    NOW,
    VERP,
    _status,
    assert_crlf_only,
    make_row,
    parse,
)

pytestmark = pytest.mark.usefixtures("ed25519_for_dkimpy")


def png(payload: bytes = b"pixels") -> bytes:
    """A real (tiny) PNG: signature, IHDR, IDAT, IEND with their CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00" + payload))
        + chunk(b"IEND", b"")
    )


def ref(id_: int, filename: str, content_type: str, **more: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "filename": filename,
        "content_type": content_type,
        "disposition": more.get("disposition", "attachment"),
        "content_id": more.get("content_id"),
    }


def signed(row: dict[str, Any], contents: dict[int, bytes]) -> bytes:
    composed = composing.compose(row, links=LINKS, verp=VERP, now=NOW, attachments=contents)
    signatures = dkim.sign(CORPUS_KEYS, composed.header_bytes(), composed.body, timestamp=1)
    data = composed.to_bytes(signatures)
    assert_crlf_only(data)
    assert dkimpy.DKIM(data).verify(idx=0, dnsfunc=CORPUS_DNS)
    assert dkimpy.DKIM(data).verify(idx=1, dnsfunc=CORPUS_DNS)
    return data


def test_attachments_make_multipart_mixed_and_come_back_byte_exact():
    pdf = b"%PDF-1.4\n" + os.urandom(200_000)  # binary, and many base64 lines
    binary = bytes(range(256)) * 3
    row = make_row(
        html_body="<p>Hi {{name}}</p>",
        attachments=[
            ref(1, "report.pdf", "application/pdf"),
            ref(2, "data.bin", "application/octet-stream"),
        ],
    )
    data = signed(row, {1: pdf, 2: binary})
    message = parse(data)
    assert message.get_content_type() == "multipart/mixed"
    body, *files = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [f.get_filename() for f in files] == ["report.pdf", "data.bin"]
    assert [f.get_content_disposition() for f in files] == ["attachment", "attachment"]
    assert files[0].get_content() == pdf and files[1].get_content() == binary
    assert message.get_body(("html",)).get_content().startswith("<p>Hi John</p>")
    # base64 written in lines of 76, as MIME asks
    lines = data.split(b"\r\n")
    encoded = [line for line in lines if len(line) == 76 and b":" not in line]
    assert len(encoded) > 3000


def test_inline_images_sit_with_the_html_in_multipart_related():
    image = png()
    row = make_row(
        html_body='<p>Logo: <img src="cid:logo@acme"></p>',
        attachments=[
            ref(1, "logo.png", "image/png", disposition="inline", content_id="logo@acme"),
            ref(2, "terms.pdf", "application/pdf"),
        ],
    )
    message = parse(signed(row, {1: image, 2: b"%PDF-1.7 terms"}))
    assert message.get_content_type() == "multipart/mixed"
    alternative, terms = message.iter_parts()
    plain, related = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    page, logo = related.iter_parts()
    assert 'src="cid:logo@acme"' in page.get_content()
    assert logo["Content-ID"] == "<logo@acme>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_content() == image
    assert terms.get_filename() == "terms.pdf"
    # the html mail clients show is the one in the related part
    assert message.get_body(("html",)).get_content() == page.get_content()


def test_inline_only_needs_no_mixed_wrapper():
    row = make_row(
        html_body='<img src="cid:a">',
        attachments=[ref(1, "a.png", "image/png", disposition="inline", content_id="a")],
    )
    message = parse(signed(row, {1: png()}))
    assert message.get_content_type() == "multipart/alternative"


def test_text_only_with_an_attachment():
    row = make_row(attachments=[ref(1, "notes.txt", "text/plain")])
    message = parse(signed(row, {1: "naïve café\n".encode()}))
    assert message.get_content_type() == "multipart/mixed"
    text, notes = message.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == "Hi John\n"
    assert notes.get_payload(decode=True) == "naïve café\n".encode()


@pytest.mark.parametrize(
    "filename",
    [
        "Größe \u2013 Übersicht 2024.pdf",  # RFC 2231, one line
        "請求書" * 40 + ".pdf",  # long: RFC 2231 continuations
        'say "hi" \\ there.pdf',  # quotes and backslash: RFC 2231 rather than escapes
        "x" * 250 + ".pdf",
    ],
)
def test_filenames_survive_the_round_trip(filename: str):
    row = make_row(attachments=[ref(1, filename, "application/pdf")])
    message = parse(signed(row, {1: b"%PDF-"}))
    [_, file] = message.iter_parts()
    assert file.get_filename() == filename
    assert file.get_param("name") == filename


def test_the_same_bytes_for_many_messages_are_the_same_attachment():
    content = b"%PDF-" + os.urandom(5000)
    parts = []
    for i in range(3):
        row = make_row(id=i, attachments=[ref(9, "a.pdf", "application/pdf")])
        [_, file] = parse(signed(row, {9: content})).iter_parts()
        parts.append(file.get_content())
    assert {hashlib.sha256(p).digest() for p in parts} == {hashlib.sha256(content).digest()}


def test_missing_bytes_fail_the_message_rather_than_send_it_without():
    row = make_row(attachments=[ref(5, "a.pdf", "application/pdf")])
    with pytest.raises(ComposeError, match="attachment 5"):
        composing.compose(row, links=LINKS, verp=VERP, now=NOW, attachments={})


def test_no_attachments_is_the_message_it_always_was():
    row = make_row(html_body="<p>x</p>")
    assert (
        composing.compose(row, links=LINKS, verp=VERP, now=NOW).body
        == composing.compose(
            dict(row, attachments=None), links=LINKS, verp=VERP, now=NOW, attachments={}
        ).body
    )


# -- end to end -----------------------------------------------------------------------------


async def test_the_mta_delivers_attachments_stored_once_for_all_recipients(
    pool, make_settings, smtp_peer, start_worker
):
    settings = make_settings(mta={"routes": {"dest.test": smtp_peer.hop}})
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="pm")
        records = await show_domain(conn, "acme.test")
    tenant = await ensure_tenant(pool, "acme")
    report = b"%PDF-1.5\n" + os.urandom(300_000)
    logo = png(os.urandom(1000))
    recipients = ["ann@dest.test", "bob@dest.test", "cy@dest.test"]
    ids = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="Your report",
            recipients=recipients,
            html='<p><img src="cid:logo"> Here it is, {{name}}.</p>',
            personalization=[{"name": r.split("@")[0]} for r in recipients],
            attachments=[
                Attachment("report.pdf", report, "application/pdf"),
                Attachment("logo.png", logo, "image/png", "inline", "logo"),
            ],
        ),
    )
    # stored once, shared by the three rows
    assert await pool.fetchval("SELECT count(*) FROM attachments WHERE tenant_id = $1", tenant) == 2
    refs = await pool.fetch("SELECT attachments FROM messages WHERE id = ANY($1)", ids)
    assert len({str(r["attachments"]) for r in refs}) == 1

    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 3)
    for queue_id in ids:
        await wait_for(lambda q=queue_id: _status(pool, q, "sent"))
    await worker.stop()

    dns = dnsfunc_for(*records)
    seen = set()
    for received in smtp_peer.received:
        assert dkimpy.verify(received.data, dnsfunc=dns)
        message = parse(received.data)
        seen.add(str(message["To"]))
        _alternative, pdf = message.iter_parts()
        assert pdf.get_filename() == "report.pdf" and pdf.get_content() == report
        [image] = [p for p in message.walk() if p["Content-ID"] == "<logo>"]
        assert image.get_content() == logo
    assert seen == set(recipients)


async def test_a_send_that_fails_leaves_no_attachment_behind(pool):
    tenant = await ensure_tenant(pool, "halfway")
    draft = Draft(
        from_email="news@acme.test",
        subject="x",
        recipients=["ann@dest.test"],
        text="x",
        attachments=[Attachment("a.pdf", b"%PDF-" + os.urandom(100), "application/pdf")],
    )
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await enqueue(conn, tenant, draft)
                raise RuntimeError("the request fails after queueing")
    assert await pool.fetchval("SELECT count(*) FROM attachments WHERE tenant_id = $1", tenant) == 0
    # and the same bytes sent twice are stored once
    await enqueue(pool, tenant, draft)
    await enqueue(pool, tenant, draft)
    assert await pool.fetchval("SELECT count(*) FROM attachments WHERE tenant_id = $1", tenant) == 1


async def test_a_claimed_batch_loads_each_attachment_once(pool):
    tenant = await ensure_tenant(pool, "batchy")
    shared = b"%PDF-" + os.urandom(1000)
    ids = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="x",
            recipients=[f"r{i}@dest.test" for i in range(5)],
            text="x",
            attachments=[Attachment("a.pdf", shared, "application/pdf")],
        ),
    )
    rows = await queue.claim(pool, 10, "test-owner", 60)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    contents = await queue.attachment_contents(pool, rows)
    assert list(contents.values()) == [shared]  # one entry for the five messages
    assert await queue.attachment_contents(pool, [dict(r, attachments=None) for r in rows]) == {}


def test_attachments_beside_awkward_bodies_are_byte_exact_and_verify():
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 400
    row = make_row(
        text_body="long " + "w" * 1200 + " line, trailing space \n\tZoë\n\n\n",
        html_body="<p>{{name}}  \t</p>" + "<br>" * 400,
        attachments=[ref(1, "a.pdf", "application/pdf")],
        settings={"track_opens": True, "track_clicks": True},
    )
    message = parse(signed(row, {1: pdf}))
    [file] = list(message.iter_attachments())
    assert file.get_content() == pdf
