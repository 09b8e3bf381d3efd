"""Complaint reports: the Abuse Reporting Format (RFC 5965) that feedback loops send.

Yahoo's CFL, Microsoft's JMRP, AOL and most others send a multipart/report with
report-type=feedback-report: a human-readable part, a message/feedback-report part of fields,
and the reported message (message/rfc822, or text/rfc822-headers when the provider returns
headers only). Providers redact the reporter's address (Original-Rcpt-To is often missing or
masked), so the message is found from the returned headers, not from the report's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from inbound.parse import find_part, parse_fields, part_text, returned_headers

# Feedback types that are not a complaint about us (RFC 5965 §7.3, RFC 6650).
NOT_COMPLAINTS = frozenset({"not-spam"})


@dataclass(frozen=True)
class Complaint:
    feedback_type: str  # abuse, fraud, virus, other, not-spam, auth-failure
    user_agent: str
    original_mail_from: str
    original_rcpt_to: str
    arrival_date: str
    source_ip: str
    reported_domain: str
    reporting_mta: str
    returned: Message | None

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type not in NOT_COMPLAINTS

    def names(self, recipient: str) -> bool:
        """Whether the report says it is about `recipient` (Original-Rcpt-To); a redacted or
        missing field names nobody."""
        return bool(recipient) and self.original_rcpt_to.lower() == recipient.lower()

    def data(self) -> dict[str, str]:
        """The report's fields for the event, empty ones left out."""
        fields = {
            "feedback_type": self.feedback_type,
            "user_agent": self.user_agent,
            "arrival_date": self.arrival_date,
            "source_ip": self.source_ip,
            "reported_domain": self.reported_domain,
            "reporting_mta": self.reporting_mta,
        }
        return {k: v[:300] for k, v in fields.items() if v}


def parse(message: Message) -> Complaint | None:
    part = find_part(message, "message/feedback-report")
    if part is None:
        return None
    fields: dict[str, str] = {}
    for block in parse_fields(part_text(part)):
        for name, value in block.items():
            fields.setdefault(name, value)
    return Complaint(
        feedback_type=(fields.get("feedback-type", "").split() or ["abuse"])[0].lower(),
        user_agent=fields.get("user-agent", ""),
        original_mail_from=fields.get("original-mail-from", "").strip("<> "),
        original_rcpt_to=fields.get("original-rcpt-to", "").strip("<> "),
        arrival_date=fields.get("arrival-date", fields.get("received-date", "")),
        source_ip=fields.get("source-ip", ""),
        reported_domain=fields.get("reported-domain", ""),
        reporting_mta=fields.get("reporting-mta", "").partition(";")[2].strip()
        or fields.get("reporting-mta", ""),
        returned=returned_headers(message),
    )
