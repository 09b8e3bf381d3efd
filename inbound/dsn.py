"""Delivery status notifications: RFC 3464 reports and the plain-text bounces that predate them.

A bounce is classified per recipient from its Action and Status fields:

- `failed` with a 5.x.x status: a hard bounce (the address is suppressed).
- `failed` with a 4.x.x status: a soft bounce. The remote MTA gave up after retrying (typically
  4.4.7, message expired): the message is lost but the address may be fine.
- `delayed`: the remote MTA is still trying. Not a bounce yet.
- `delivered`, `relayed`, `expanded`: success notices; nothing to do.

A missing or unknown Action is derived from the status class; a missing Status from the SMTP
reply in Diagnostic-Code. Plain-text bounces (qmail, old Exim, Yahoo's legacy format) are read
by the same rules from their prose, with permanent-error wording winning over temporary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from inbound.parse import (
    address,
    body_text,
    find_part,
    header_text,
    inline_returned,
    parse_fields,
    part_text,
    returned_headers,
)

ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
SMTP_CODE = re.compile(r"(?<![\d.#])([245][0-5]\d)(?=[ :-]|$)", re.MULTILINE)
_FAILED, _DELAYED = "failed", "delayed"
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_SEVERITY = {"failed": 0, "delayed": 1}

_BOUNCE_LOCALS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery (failure|failed|problem)"
    r"|mail delivery (failed|failure|system|subsystem)|returned mail|failure notice"
    r"|non-?delivery|could not be delivered|delivery (has been )?delayed|delayed mail"
    r"|warning: message .* delayed|returned to sender|delivery notification",
    re.IGNORECASE,
)
_BOUNCE_BODY = re.compile(
    r"could not be delivered|wasn'?t able to deliver|was not able to deliver|unable to deliver"
    r"|permanent error|permanent fatal error|delivery (has )?failed|not yet been delivered"
    r"|delivery to the following recipient|following address(es)? failed"
    r"|message could not be delivered|couldn'?t be delivered",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"permanent(ly)? (error|failure|fatal)|this is a permanent|i'?ve given up|giving up"
    r"|not going to try again|will not be (retried|delivered)|could not be delivered",
    re.IGNORECASE,
)
_TEMPORARY = re.compile(
    r"not yet been delivered|delivery attempts will continue|will (keep|continue) (trying|to try)"
    r"|still trying|temporar(y|ily) (failure|error|problem|deferred)|has been delayed"
    r"|delivery (is )?delayed|will retry",
    re.IGNORECASE,
)
_QMAIL_RECIPIENT = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:", re.MULTILINE)
_INDENTED_ADDRESS = re.compile(r"^[ \t]+<?([^<>\s@]+@[^<>\s@:]+)>?[ \t]*$", re.MULTILINE)
_ANY_ADDRESS = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class RecipientStatus:
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # enhanced status code, "5.1.1"
    final_recipient: str
    original_recipient: str
    diagnostic: str  # Diagnostic-Code as given, "smtp; 550 5.1.1 <...>: user unknown"
    remote_mta: str
    smtp_code: int | None

    @property
    def classification(self) -> str | None:
        """hard_bounce, soft_bounce, delayed, or None for a success notice."""
        if self.action == _FAILED:
            return "hard_bounce" if self.status.startswith("5") else "soft_bounce"
        if self.action == _DELAYED:
            return "delayed"
        return None

    def about(self, recipient: str) -> bool:
        wanted = recipient.lower()
        return wanted in (self.final_recipient.lower(), self.original_recipient.lower())


@dataclass(frozen=True)
class Dsn:
    source: str  # "dsn" (RFC 3464) or "text" (a plain-text bounce read from its prose)
    reporting_mta: str
    recipients: tuple[RecipientStatus, ...]
    returned: Message | None  # headers of the message it returns, when it returns them

    def names(self, recipient: str) -> bool:
        """Whether a recipient block is about `recipient` (Final- or Original-Recipient)."""
        return any(r.about(recipient) for r in self.recipients)

    def pick(self, recipient: str) -> RecipientStatus | None:
        """The block about `recipient` (or any block), most severe first."""
        about = [r for r in self.recipients if r.about(recipient)] or list(self.recipients)
        about.sort(key=lambda r: _SEVERITY.get(r.action, 9))
        return about[0] if about else None


def parse(message: Message, mail_from: str) -> Dsn | None:
    """The DSN in `message`: an RFC 3464 report, else a recognisable plain-text bounce."""
    report = parse_report(message)
    if report is not None:
        return report
    if looks_like_bounce(message, mail_from):
        return parse_text(message)
    return None


def parse_report(message: Message) -> Dsn | None:
    part = find_part(message, "message/delivery-status")
    if part is None:
        return None
    blocks = parse_fields(part_text(part))
    per_message: dict[str, str] = {}
    if blocks and not _is_recipient_block(blocks[0]):
        per_message = blocks.pop(0)
    recipients = tuple(_recipient(b) for b in blocks if _is_recipient_block(b))
    return Dsn(
        source="dsn",
        reporting_mta=_typed_value(per_message.get("reporting-mta", "")),
        recipients=recipients,
        returned=returned_headers(message),
    )


def looks_like_bounce(message: Message, mail_from: str) -> bool:
    sender = address(header_text(message, "From"))
    local = sender.rpartition("@")[0].lower()
    display = header_text(message, "From").lower()
    from_daemon = local in _BOUNCE_LOCALS or "mail delivery" in display
    if not (mail_from == "" or from_daemon):
        return False
    if _BOUNCE_SUBJECT.search(header_text(message, "Subject")):
        return True
    explanation, _ = inline_returned(body_text(message, 20_000))
    return from_daemon and _BOUNCE_BODY.search(explanation) is not None


def parse_text(message: Message) -> Dsn:
    explanation, inline = inline_returned(body_text(message))
    returned = returned_headers(message) or inline
    enhanced = _first_enhanced(explanation)
    code_match = SMTP_CODE.search(explanation)
    code = int(code_match.group(1)) if code_match else None
    permanent = _PERMANENT.search(explanation) is not None
    temporary = _TEMPORARY.search(explanation) is not None
    status_class = enhanced[0] if enhanced else (str(code)[0] if code else "")
    if temporary and not permanent and status_class != "5":
        action, status = _DELAYED, enhanced or "4.0.0"
    elif status_class == "4" and not permanent:
        action, status = _FAILED, enhanced or "4.0.0"
    else:
        action = _FAILED
        status = enhanced if enhanced.startswith("5") else "5.0.0"
    recipient = _text_recipient(explanation)
    return Dsn(
        source="text",
        reporting_mta="",
        recipients=(
            RecipientStatus(
                action=action,
                status=status,
                final_recipient=recipient,
                original_recipient="",
                diagnostic=_diagnostic_line(explanation, enhanced, code_match),
                remote_mta="",
                smtp_code=code,
            ),
        ),
        returned=returned,
    )


def _is_recipient_block(block: dict[str, str]) -> bool:
    return "final-recipient" in block or "original-recipient" in block or "action" in block


def _recipient(block: dict[str, str]) -> RecipientStatus:
    diagnostic = block.get("diagnostic-code", "")
    status = _first_enhanced(block.get("status", ""))
    if not status or status.endswith(".0.0"):
        # "5.0.0" says little; the remote's own reply usually says more (5.1.1).
        detailed = _first_enhanced(diagnostic)
        if detailed and (not status or detailed[0] == status[0]):
            status = detailed
    code_match = SMTP_CODE.search(_typed_value(diagnostic))
    code = int(code_match.group(1)) if code_match else None
    action = block.get("action", "").split()[0].lower() if block.get("action") else ""
    if not status:
        status = f"{code // 100}.0.0" if code else ("5.0.0" if action == _FAILED else "")
    if action not in _ACTIONS:
        action = {"5": _FAILED, "4": _DELAYED, "2": "delivered"}.get(status[:1], _FAILED)
    return RecipientStatus(
        action=action,
        status=status,
        final_recipient=_typed_address(block.get("final-recipient", "")),
        original_recipient=_typed_address(block.get("original-recipient", "")),
        diagnostic=diagnostic[:1000],
        remote_mta=_typed_value(block.get("remote-mta", "")),
        smtp_code=code,
    )


def _typed_value(value: str) -> str:
    """`dns; mx.example.com` -> `mx.example.com` (RFC 3464 typed fields)."""
    _type, sep, rest = value.partition(";")
    return (rest if sep else value).strip()


def _typed_address(value: str) -> str:
    return _typed_value(value).strip("<> ")


def _first_enhanced(text: str) -> str:
    match = ENHANCED.search(text)
    return ".".join(match.groups()) if match else ""


def _text_recipient(explanation: str) -> str:
    for pattern in (_QMAIL_RECIPIENT, _INDENTED_ADDRESS, _ANY_ADDRESS):
        match = pattern.search(explanation)
        if match is not None:
            return (match.group(1) if match.groups() else match.group(0)).strip("<>")
    return ""


def _diagnostic_line(explanation: str, enhanced: str, code_match: re.Match[str] | None) -> str:
    """The line of prose carrying the remote's reply (the best 'why' a plain bounce offers)."""
    position = code_match.start() if code_match else None
    if enhanced and position is None:
        position = explanation.find(enhanced)
    if position is None or position < 0:
        return ""
    start = explanation.rfind("\n", 0, position) + 1
    end = explanation.find("\n", position)
    return explanation[start : end if end >= 0 else None].strip()[:1000]
