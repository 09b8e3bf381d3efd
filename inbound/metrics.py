"""What the inbound server exposes on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class InboundMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "penguinmails_inbound_messages",
            "Inbound mail per envelope recipient, by classification (hard_bounce, soft_bounce, "
            "delayed, complaint, reply, auto_reply, unsubscribe, ignored, unmatched, forged) "
            "and result (recorded, duplicate, dropped).",
            ["classification", "result"],
            registry=r,
        )
        self.refused = Counter(
            "penguinmails_inbound_refused",
            "Refusals: relaying (RCPT outside the bounce domains), too many sessions "
            "(sessions), too many sessions from one client (client_sessions), too many "
            "connections from one client within the window (client_rate).",
            ["reason"],
            registry=r,
        )
        self.sessions = Gauge(
            "penguinmails_inbound_sessions", "SMTP sessions open now.", registry=r
        )
