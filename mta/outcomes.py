"""What an SMTP reply means for a message: its next status, event and retry time.

2xx delivered: status 'sent', event `email.delivered` (the receiving server took it; the
`email.sent` event was recorded when the message was queued). 4xx deferred with exponential
backoff and jitter until the message is older than the maximum age, then bounced; 5xx
bounced, and a hard bounce suppresses the address.
The reply text and the RFC 3463 enhanced status code are kept for the operator and the
customer's webhook.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from penguinmails.config import MtaSettings

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """An SMTP answer, or a local failure (code None) such as a timeout or refused connection."""

    code: int | None
    message: str
    # The TLS of the session it came over (version, cipher, verified, mta_sts), when any:
    # recorded with the delivery, never part of what the reply means.
    tls: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.message)
        return match.group(1) if match else None

    @property
    def permanent(self) -> bool:
        return self.code is not None and self.code >= 500

    @property
    def accepted(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.code is not None else self.message


@dataclass(frozen=True)
class Outcome:
    status: str
    event_type: str | None
    attempted: int = 1
    next_attempt_at: datetime | None = None
    reply: Reply | None = None
    suppress: bool = False
    data: dict[str, Any] = field(default_factory=dict)


def retry_delay(attempts: int, settings: MtaSettings, rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempts + 1`: doubling from the base, capped, +/-20% jitter."""
    doubling = 2.0 ** min(max(attempts - 1, 0), 32)  # capped below anyway; no overflow
    base = min(settings.retry_max_seconds, settings.retry_base_seconds * doubling)
    jitter: float = (rng or random).uniform(0.8, 1.2)
    return base * jitter


def decide(
    reply: Reply,
    *,
    attempts: int,
    created_at: datetime,
    now: datetime,
    settings: MtaSettings,
    not_before: float | None = None,
) -> Outcome:
    """The outcome of one delivery attempt; `attempts` counts this one."""
    data: dict[str, Any] = {"smtp_code": reply.code, "smtp_message": reply.message}
    if reply.tls is not None:
        data["tls"] = dict(reply.tls)
    if reply.enhanced:
        data["enhanced_status"] = reply.enhanced
    if reply.accepted:
        return Outcome("sent", "email.delivered", reply=reply, data=data)
    if reply.permanent:
        data["bounce_type"] = "hard"
        return Outcome("bounced", "email.bounced", reply=reply, suppress=True, data=data)
    delay = retry_delay(attempts, settings)
    if not_before is not None:
        delay = max(delay, not_before - now.timestamp())
    next_at = now + timedelta(seconds=delay)
    if next_at - created_at > timedelta(seconds=settings.max_age_seconds):
        data["bounce_type"] = "expired"
        return Outcome("bounced", "email.bounced", reply=reply, data=data)
    data["next_attempt_at"] = next_at.isoformat()
    return Outcome("deferred", "email.deferred", next_attempt_at=next_at, reply=reply, data=data)
