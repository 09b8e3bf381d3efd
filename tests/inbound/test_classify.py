"""The readers on their own (no server, no database): the edges the corpus does not show."""

from __future__ import annotations

import pytest

from inbound.classify import classify
from inbound.dsn import parse_report
from inbound.parse import parse
from penguinmails.cli import build_parser, cmd_inbound


def _mail(headers: str, body: str = "Hello\n") -> bytes:
    return (headers.strip() + "\n\n" + body).encode()


@pytest.mark.parametrize(
    ("headers", "mail_from", "kind"),
    [
        ("From: a@x.test\nSubject: Re: Out of office plans for Q3", "a@x.test", "reply"),
        ("From: a@x.test\nSubject: Out of Office: Hello", "a@x.test", "auto_reply"),
        ("From: a@x.test\nSubject: Re: Hello\nAuto-Submitted: no", "a@x.test", "reply"),
        ("From: a@x.test\nSubject: Re: Hello\nPrecedence: bulk", "a@x.test", "auto_reply"),
        ("From: a@x.test\nSubject: Re: Hello", "", "auto_reply"),  # RFC 3834 null sender
        ("From: noreply@x.test\nSubject: Re: Hello", "noreply@x.test", "auto_reply"),
        ("From: a@x.test\nSubject: =?utf-8?q?R=C3=A9ponse_automatique?=", "a@x.test", "auto_reply"),
    ],
)
def test_reply_or_auto_reply(headers: str, mail_from: str, kind: str) -> None:
    assert classify(_mail(headers), mail_from).kind == kind


def test_a_base64_encoded_delivery_status_part_is_read() -> None:
    raw = _mail(
        "From: MAILER-DAEMON@x.test\nContent-Type: multipart/report; report-type=delivery-status;"
        ' boundary="B"\nMIME-Version: 1.0',
        "--B\nContent-Type: text/plain\n\noops\n--B\nContent-Type: message/delivery-status\n"
        "Content-Transfer-Encoding: base64\n\n"
        "UmVwb3J0aW5nLU1UQTogZG5zOyBteC5leGFtcGxlLmNvbQoKRmluYWwtUmVjaXBpZW50OiByZmM4\n"
        "MjI7IGFAYi5jb20KQWN0aW9uOiBmYWlsZWQKU3RhdHVzOiA1LjEuMQo=\n--B--\n",
    )
    report = parse_report(parse(raw))
    assert report is not None
    [block] = report.recipients
    assert (block.final_recipient, block.action, block.status) == ("a@b.com", "failed", "5.1.1")
    assert report.reporting_mta == "mx.example.com"


def test_an_ip_address_is_not_a_status_code() -> None:
    raw = _mail(
        "From: MAILER-DAEMON@x.test\nSubject: failure notice",
        "I'm afraid I wasn't able to deliver your message.\nThis is a permanent error.\n\n"
        "<a@b.test>:\nConnected to 10.5.1.1 but sender was rejected.\n",
    )
    inbound = classify(raw, "")
    verdict = inbound.verdict_for("a@b.test")
    assert verdict.classification == "hard_bounce"
    assert verdict.enhanced_status == "5.0.0"


def test_a_multi_recipient_dsn_is_read_for_the_original_recipient() -> None:
    raw = _mail(
        "From: MAILER-DAEMON@x.test\nContent-Type: multipart/report; report-type=delivery-status;"
        ' boundary="B"\nMIME-Version: 1.0',
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.test\n\n"
        "Final-Recipient: rfc822; other@b.test\nAction: failed\nStatus: 5.1.1\n\n"
        "Final-Recipient: rfc822; ours@b.test\nAction: delayed\nStatus: 4.2.2\n\n--B--\n",
    )
    inbound = classify(raw, "")
    assert inbound.verdict_for("Ours@B.test").classification == "delayed"


def test_garbage_never_raises() -> None:
    for raw in (b"", b"\xff\xfe\x00", b"Content-Type: multipart/report\n\n--", b"From: <<<\n\n"):
        inbound = classify(raw, "")
        assert inbound.verdict_for("a@b.test").classification in ("ignored", "reply", "auto_reply")


def test_the_cli_has_an_inbound_command() -> None:
    assert build_parser().parse_args(["inbound"]).func is cmd_inbound
