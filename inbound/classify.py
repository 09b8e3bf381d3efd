"""What came back, and what it means for the message it is about: no database, no network.

`classify(raw, mail_from)` reads one inbound message once. The result knows how to find the
original (addresses that may be our signed return path, Message-IDs it refers to) and, given
the original's recipient, what to record (`verdict_for`). Reports are recognised first: a DSN
or an ARF report carries Auto-Submitted too, and must not be taken for an auto-reply.

Event choices (documented in inbound/server.py's docstring too):
- `failed` DSN -> `email.bounced` with bounce_type hard (5.x.x) or soft (4.x.x); the message
  becomes 'bounced' (it was 'sent': the receiving MX took it, then gave it back).
- `delayed` DSN -> `email.deferred` with bounce_type soft: the remote MTA is still trying, so
  it is not a bounce (and not counted in bounce rates) until a `failed` DSN says so.
- ARF -> `email.complained` (not-spam feedback is logged, no event).
- reply -> `email.replied`; automatic reply -> `email.auto_replied`.

Only our signed address proves which message a report is about; a Message-ID does not (it is
in every copy of the message and in the References of every reply in its thread). So a
report found by Message-ID alone is recorded when it is about that message's own recipient,
and acts on nothing: no event, no suppression, no status change (`unsigned_verdict_for`).
Replies are found by In-Reply-To/References as a rule (they go to the Reply-To, and mail
clients never quote the return path), and a reply changes no state: they keep their event.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from email.message import Message
from typing import Any

from inbound import arf, dsn, replies
from inbound.parse import address, addresses, angle_ids, header_text, parse

log = logging.getLogger(__name__)

HARD, SOFT = "hard", "soft"


@dataclass(frozen=True)
class Verdict:
    classification: str  # a value of inbound_messages.classification
    reason: str  # why, for people reading the log
    dedupe_key: str  # unique per original message: the same report twice records once
    event_type: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    suppress: str | None = None  # suppression reason, for the original's recipient
    bounce: bool = False  # the original did not arrive: 'sent' becomes 'bounced'
    enhanced_status: str | None = None
    smtp_code: int | None = None
    diagnostic: str | None = None
    first_only: bool = False  # record the event only on the first of its type (unsubscribe)

    def recorded_only(self) -> Verdict:
        """This verdict as a note in the log, acting on nothing. Its own idempotency key, so
        that a noted report never stands in for the signed one that may follow."""
        return replace(
            self,
            reason=f"{self.reason} (matched by Message-ID only: recorded, not acted on)",
            dedupe_key=f"unsigned:{self.dedupe_key}",
            event_type=None,
            suppress=None,
            bounce=False,
            first_only=False,
        )


@dataclass(frozen=True)
class Inbound:
    kind: str  # dsn | arf | reply | auto_reply | unparseable
    sha256: bytes
    header_message_id: str
    # Addresses the mail was delivered to before it reached us (X-Original-To, Delivered-To):
    # read like the envelope recipient when that is not one of our addresses.
    aliases: tuple[str, ...] = ()
    # Addresses in the returned original that may be our signed return path (Return-Path,
    # the mailto: of List-Unsubscribe): they name the original, never an unsubscribe.
    returned_addresses: tuple[str, ...] = ()
    # Message-IDs that may be ours: the returned Message-ID, or In-Reply-To/References.
    message_ids: tuple[str, ...] = ()
    report: dsn.Dsn | arf.Complaint | None = None
    auto_reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # from, subject, snippet of a reply

    def verdict_for(self, recipient: str) -> Verdict:
        """What this mail means for a message of ours sent to `recipient`."""
        if isinstance(self.report, dsn.Dsn):
            return _dsn_verdict(self.report, recipient)
        if isinstance(self.report, arf.Complaint):
            return _complaint_verdict(self.report)
        if self.kind == "auto_reply":
            return Verdict(
                "auto_reply",
                self.auto_reason or "automatic reply",
                f"auto_reply:{self._key()}",
                "email.auto_replied",
                {**self.summary, "reason": self.auto_reason},
            )
        if self.kind == "reply":
            return Verdict(
                "reply", "reply", f"reply:{self._key()}", "email.replied", dict(self.summary)
            )
        return Verdict("ignored", "could not be read as mail", f"ignored:{self._key()}")

    def unsigned_verdict_for(self, recipient: str) -> Verdict | None:
        """What this mail may do for a message it names only by a quoted Message-ID: a reply
        or automatic reply counts as such; a report (DSN, ARF) is only recorded, and only
        when it is about `recipient` (None: it is about someone else, record nothing)."""
        if self.report is None:
            return self.verdict_for(recipient)
        if not self.report.names(recipient):
            return None
        return self.verdict_for(recipient).recorded_only()

    def _key(self) -> str:
        """The same mail twice (by its Message-ID, else its bytes) is one mail."""
        if self.header_message_id:
            return hashlib.sha256(self.header_message_id.encode()).hexdigest()[:32]
        return self.sha256.hex()[:32]


def unsubscribe_verdict() -> Verdict:
    """Mail to the List-Unsubscribe mailto: address: the tracker's one-click semantics."""
    return Verdict(
        "unsubscribe",
        "mail to the List-Unsubscribe address",
        "unsubscribe",
        "email.unsubscribed",
        {"method": "mailto"},
        suppress="unsubscribed",
        first_only=True,
    )


def classify(raw: bytes, mail_from: str) -> Inbound:
    """Never raises: mail nobody can read is still matched by its envelope, and ignored."""
    digest = hashlib.sha256(raw).digest()
    try:
        # NUL has no place in mail (RFC 5322) nor in a Postgres text value: read past it.
        return _classify(parse(raw.replace(b"\0", b"")), mail_from, digest)
    except Exception:  # a parser bug must not cost us the envelope or crash the session
        log.exception("inbound message could not be parsed", extra={"action": "inbound_parse"})
        return Inbound("unparseable", digest, "")


def _classify(message: Message, mail_from: str, digest: bytes) -> Inbound:
    own_id = (angle_ids(header_text(message, "Message-ID")) or [""])[0][:500]
    aliases = tuple(addresses(message, "X-Original-To") + addresses(message, "Delivered-To"))
    common: dict[str, Any] = {"sha256": digest, "header_message_id": own_id, "aliases": aliases}
    report: dsn.Dsn | arf.Complaint | None = arf.parse(message)
    if report is None:
        report = dsn.parse(message, mail_from)
    if report is not None:
        returned = _returned_addresses(report.returned)
        if isinstance(report, arf.Complaint) and report.original_mail_from:
            # The envelope sender the provider saw: our signed return path, when not redacted.
            returned = (report.original_mail_from, *returned)
        return Inbound(
            "arf" if isinstance(report, arf.Complaint) else "dsn",
            report=report,
            returned_addresses=returned,
            message_ids=tuple(_returned_ids(report.returned)),
            **common,
        )
    summary = {
        "from": address(header_text(message, "From"))[:320],
        "subject": header_text(message, "Subject")[:300],
        "message_id": own_id or None,
    }
    ids = tuple(replies.referenced_ids(message))
    if message.get_content_type() == "multipart/report":
        # A read receipt (message/disposition-notification) or another report we do not read.
        kind = message.get_param("report-type") or "unknown"
        return Inbound(
            "auto_reply",
            message_ids=ids,
            auto_reason=f"report-type={kind}",
            summary=summary,
            **common,
        )
    reason = replies.auto_reply_reason(message, mail_from)
    if reason is None:
        summary["snippet"] = replies.snippet(message)
    return Inbound(
        "reply" if reason is None else "auto_reply",
        message_ids=ids,
        auto_reason=reason,
        summary=summary,
        **common,
    )


def _returned_addresses(returned: Message | None) -> tuple[str, ...]:
    if returned is None:
        return ()
    found = addresses(returned, "Return-Path")
    unsubscribe = header_text(returned, "List-Unsubscribe")
    found += [a[len("mailto:") :] for a in angle_ids(unsubscribe) if a.startswith("mailto:")]
    return tuple(a.partition("?")[0] for a in found)


def _returned_ids(returned: Message | None) -> list[str]:
    if returned is None:
        return []
    return angle_ids(header_text(returned, "Message-ID"))[:1]


def _dsn_verdict(report: dsn.Dsn, recipient: str) -> Verdict:
    block = report.pick(recipient)
    classification = block.classification if block is not None else None
    if block is None or classification is None:
        what = f"action {block.action}" if block is not None else "no recipient fields"
        return Verdict("ignored", f"DSN with {what}", f"ignored:{what}")
    source = "DSN" if report.source == "dsn" else "plain-text bounce"
    reason = f"{source}: {block.action} {block.status}"
    data: dict[str, Any] = {
        "bounce_type": HARD if classification == "hard_bounce" else SOFT,
        "action": block.action,
        "enhanced_status": block.status,
        "smtp_code": block.smtp_code,
        "smtp_message": block.diagnostic or None,
        "recipient": block.final_recipient or None,
        "remote_mta": block.remote_mta or None,
        "reporting_mta": report.reporting_mta or None,
        "source": report.source,
    }
    data = {k: v for k, v in data.items() if v is not None}
    if classification == "delayed":
        return Verdict("delayed", reason, "delay", "email.deferred", data)
    return Verdict(
        classification,
        reason,
        "bounce",
        "email.bounced",
        data,
        suppress="hard_bounce" if classification == "hard_bounce" else None,
        bounce=True,
        enhanced_status=block.status,
        smtp_code=block.smtp_code,
        diagnostic=block.diagnostic or None,
    )


def _complaint_verdict(report: arf.Complaint) -> Verdict:
    reason = f"ARF feedback-type {report.feedback_type}"
    if report.user_agent:
        reason += f" from {report.user_agent[:80]}"
    if not report.is_complaint:
        return Verdict("ignored", reason, f"ignored:{report.feedback_type}")
    return Verdict(
        "complaint", reason, "complaint", "email.complained", report.data(), suppress="complaint"
    )
