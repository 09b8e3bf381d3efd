"""Every sample in corpus/ goes into the real server over SMTP and is classified as labelled.

The table is the label: the file, the envelope (recipient placeholder and sender), what it
must be classified as, the event it must record (with the fields that matter), whether the
original's recipient ends up suppressed (and why), the original's status afterwards, and how
it was matched to the original. A sample labelled `unmatched` is dropped: nothing of it is
recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.inbound.conftest import CORPUS, corpus, send, sent_message


@dataclass(frozen=True)
class Label:
    file: str
    rcpt: str  # placeholder for the envelope recipient
    sender: str  # envelope sender ('' is <>); a placeholder or an address
    classification: str
    event: str | None
    data: dict[str, Any] = field(default_factory=dict)
    suppressed: str | None = None
    status: str = "sent"
    matched_by: str = "verp"


HARD = {"bounce_type": "hard", "action": "failed"}
SOFT = {"bounce_type": "soft"}
LABELS = [
    # Delivery status notifications (RFC 3464), to the signed return path.
    Label("gmail_hard_5.1.1.eml", "RETURN_PATH", "", "hard_bounce", "email.bounced",
          {**HARD, "enhanced_status": "5.1.1", "smtp_code": 550, "source": "dsn"},
          "hard_bounce", "bounced"),
    Label("gmail_delayed_4.4.1.eml", "RETURN_PATH", "", "delayed", "email.deferred",
          {**SOFT, "action": "delayed", "enhanced_status": "4.4.1"}),
    Label("outlook365_hard_5.1.10.eml", "RETURN_PATH", "", "hard_bounce", "email.bounced",
          {**HARD, "enhanced_status": "5.1.10", "smtp_code": 550}, "hard_bounce", "bounced"),
    Label("exchange2016_mailbox_full_5.2.2.eml", "RETURN_PATH", "", "hard_bounce",
          "email.bounced", {**HARD, "enhanced_status": "5.2.2", "smtp_code": 554},
          "hard_bounce", "bounced"),
    Label("postfix_hard_user_unknown_5.1.1.eml", "RETURN_PATH", "", "hard_bounce",
          "email.bounced",
          {**HARD, "enhanced_status": "5.1.1", "smtp_code": 550, "remote_mta": "mx.example.org",
           "reporting_mta": "mail.example.org"},
          "hard_bounce", "bounced"),
    Label("postfix_delayed_4.4.1.eml", "RETURN_PATH", "", "delayed", "email.deferred",
          {**SOFT, "action": "delayed", "enhanced_status": "4.4.1"}),
    Label("postfix_expired_4.4.7.eml", "RETURN_PATH", "", "soft_bounce", "email.bounced",
          {**SOFT, "action": "failed", "enhanced_status": "4.4.7"}, None, "bounced"),
    Label("postfix_success_notice.eml", "RETURN_PATH", "", "ignored", None),
    # Exim: Status 5.0.0, refined from the remote's own 5.1.1 in Diagnostic-Code.
    Label("exim_dsn_5.0.0_refined.eml", "RETURN_PATH", "", "hard_bounce", "email.bounced",
          {**HARD, "enhanced_status": "5.1.1", "smtp_code": 550}, "hard_bounce", "bounced"),
    # Plain-text bounces, read from their prose.
    Label("yahoo_legacy_failure_notice_554.eml", "RETURN_PATH", "", "hard_bounce",
          "email.bounced", {**HARD, "enhanced_status": "5.0.0", "smtp_code": 554,
                            "source": "text"},
          "hard_bounce", "bounced"),
    Label("exim_legacy_text_hard_5.1.1.eml", "RETURN_PATH", "", "hard_bounce", "email.bounced",
          {**HARD, "enhanced_status": "5.1.1", "smtp_code": 550, "source": "text"},
          "hard_bounce", "bounced"),
    Label("exim_legacy_text_delay_4.7.1.eml", "RETURN_PATH", "", "delayed", "email.deferred",
          {**SOFT, "action": "delayed", "enhanced_status": "4.7.1", "smtp_code": 451}),
    Label("qmail_hard_5.1.1.eml", "RETURN_PATH", "", "hard_bounce", "email.bounced",
          {**HARD, "enhanced_status": "5.1.1", "smtp_code": 550, "source": "text"},
          "hard_bounce", "bounced"),
    # Complaint reports (ARF) to the feedback-loop address, matched from what they return.
    Label("arf_yahoo_abuse.eml", "FBL_ADDRESS", "feedback@arf.mail.yahoo.com", "complaint",
          "email.complained",
          {"feedback_type": "abuse", "user_agent": "Yahoo!-Mail-Feedback/2.0",
           "source_ip": "192.0.2.25"},
          "complaint", matched_by="returned_address"),
    Label("arf_outlook_jmrp_abuse.eml", "FBL_ADDRESS", "staff@hotmail.com", "complaint",
          "email.complained", {"feedback_type": "abuse", "user_agent": "Microsoft JMRP"},
          "complaint", matched_by="returned_address"),
    # Redacted, and what it returns has no Return-Path: only our Message-ID names the original,
    # and the report names no recipient to hold it against. Nothing may come of it.
    Label("arf_aol_headers_only_abuse.eml", "FBL_ADDRESS", "scomp@aol.net", "unmatched", None,
          matched_by=""),
    Label("arf_not_spam.eml", "FBL_ADDRESS", "fbl@mailbox.example.test", "ignored", None,
          matched_by="returned_address"),
    # Automatic replies: to the Reply-To address on the bounce domain, or the return path.
    Label("ooo_outlook_automatic_reply.eml", "REPLY_ADDRESS", "RECIPIENT", "auto_reply",
          "email.auto_replied", {"reason": "Auto-Submitted: auto-generated"},
          matched_by="message_id"),
    Label("ooo_gmail_vacation.eml", "REPLY_ADDRESS", "RECIPIENT", "auto_reply",
          "email.auto_replied", {"reason": "Auto-Submitted: auto-replied",
                                 "subject": "Re: Hello"},
          matched_by="message_id"),
    Label("ooo_german_subject_only.eml", "REPLY_ADDRESS", "RECIPIENT", "auto_reply",
          "email.auto_replied", {"subject": "Abwesenheitsnotiz: Hello"},
          matched_by="message_id"),
    Label("ooo_cpanel_autorespond_null_sender.eml", "RETURN_PATH", "", "auto_reply",
          "email.auto_replied", {"reason": "X-Autorespond header"}),
    Label("mdn_read_receipt.eml", "REPLY_ADDRESS", "RECIPIENT", "auto_reply",
          "email.auto_replied", {"reason": "report-type=disposition-notification"},
          matched_by="message_id"),
    # People.
    Label("reply_gmail_human.eml", "REPLY_ADDRESS", "RECIPIENT", "reply", "email.replied",
          {"subject": "Re: Hello", "snippet": "Sounds interesting, can we talk on Tuesday? Sam"},
          matched_by="message_id"),
    Label("reply_outlook_human_references_only.eml", "REPLY_ADDRESS", "RECIPIENT", "reply",
          "email.replied", {"subject": "RE: Hello",
                            "snippet": "Please send me the pricing sheet. Jane"},
          matched_by="message_id"),
    # The mailto: half of List-Unsubscribe.
    Label("unsubscribe_gmail_mailto.eml", "UNSUBSCRIBE", "RECIPIENT", "unsubscribe",
          "email.unsubscribed", {"method": "mailto"}, "unsubscribed", matched_by="unsubscribe"),
]  # fmt: skip


def test_every_corpus_file_has_a_label():
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(label.file for label in LABELS)


@pytest.mark.parametrize("label", LABELS, ids=[label.file for label in LABELS])
async def test_corpus_sample_is_classified_as_labelled(
    label: Label, pool, inbound_settings, start_inbound
):
    settings = inbound_settings()
    server = await start_inbound(settings)
    original = await sent_message(pool, settings)
    other = await sent_message(pool, settings, "bystander@dest.test")

    errors, reply = await send(
        server.port,
        original.fill(corpus(label.file)),
        original.envelope(label.sender),
        [original.envelope(label.rcpt)],
    )
    assert errors == {}
    assert reply.startswith("2.0.0"), reply

    if label.classification == "unmatched":
        assert server.metrics.messages.labels("unmatched", "dropped")._value.get() == 1
        assert await pool.fetch("SELECT * FROM inbound_messages") == []
    else:
        [logged] = await pool.fetch("SELECT * FROM inbound_messages")
        assert logged["classification"] == label.classification, logged["reason"]
        assert logged["message_id"] == original.queue_id
        assert logged["matched_by"] == label.matched_by

    events = await pool.fetch(
        "SELECT type, message_id, data FROM events "
        "WHERE type NOT IN ('email.sent', 'email.received') ORDER BY id"
    )
    # A reply or automatic reply is kept whole, announced by one email.received; nothing else is.
    kept = await pool.fetch("SELECT public_id, auto FROM inbound_emails")
    received = await pool.fetch("SELECT data FROM events WHERE type = 'email.received'")
    if label.classification in ("reply", "auto_reply"):
        [email] = kept
        assert email["auto"] is (label.classification == "auto_reply")
        assert [r["data"]["inbound_id"] for r in received] == [email["public_id"]]
    else:
        assert kept == [] and received == []
    if label.event is None:
        assert events == []
    else:
        [event] = events
        assert event["type"] == label.event
        assert event["message_id"] == original.queue_id
        data = event["data"]
        for key, value in label.data.items():
            assert data.get(key) == value, (key, data)
        assert data["inbound_id"] == logged["id"]
        assert data["matched_by"] == label.matched_by
        if label.event == "email.bounced":  # the original had been accepted: "sent"
            assert data["after_delivery"] is True

    suppressions = await pool.fetch("SELECT tenant_id, email, reason FROM suppressions")
    if label.suppressed is None:
        assert suppressions == []
    else:
        [row] = suppressions
        assert (row["email"], row["reason"]) == (original.recipient, label.suppressed)

    statuses = dict(await pool.fetch("SELECT id, status FROM messages"))
    assert statuses == {original.queue_id: label.status, other.queue_id: "sent"}
