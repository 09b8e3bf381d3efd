"""What the tracker exposes on /metrics: hits served and recorded, webhook deliveries, backlog.

Each Tracker has its own registry rather than prometheus-client's global one, so several
trackers (tests, `penguinmails up`) can live in one process without clashing names. It is
served on `[tracker] metrics_listen` (penguinmails.observability.ops_app), never on the public
listener that recipients' mail clients reach.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from penguinmails.queries import load

SQL = load("tracker")


class TrackerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hits = Counter(
            "penguinmails_tracker_hits",
            "Requests to tracking URLs, by kind (open, click, unsubscribe_page, unsubscribe) "
            "and result (ok, bad_token, gone, error).",
            ["kind", "result"],
            registry=r,
        )
        self.hits_recorded = Counter(
            "penguinmails_tracker_hits_recorded", "Hits committed to the database.", registry=r
        )
        self.hits_dropped = Counter(
            "penguinmails_tracker_hits_dropped",
            "Hits not recorded: buffer full during a database outage, unwritable, or still "
            "buffered when shutdown ran out of time.",
            registry=r,
        )
        self.hit_flush_errors = Counter(
            "penguinmails_tracker_hit_flush_errors",
            "Failed batch writes (the batch is kept and retried).",
            registry=r,
        )
        self.hit_buffer = Gauge(
            "penguinmails_tracker_hit_buffer", "Hits waiting to be written.", registry=r
        )
        self.hit_flush_seconds = Histogram(
            "penguinmails_tracker_hit_flush_seconds",
            "Time to write one batch of hits.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "penguinmails_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, failed, released).",
            ["outcome"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "penguinmails_webhook_request_seconds",
            "Duration of webhook requests, whatever their outcome.",
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "penguinmails_webhook_backlog",
            "Webhook deliveries not yet done, by status (pending, delivering).",
            ["status"],
            registry=r,
        )
        self.webhook_in_flight = Gauge(
            "penguinmails_webhook_in_flight", "Webhook requests this process has open.", registry=r
        )
        self.webhooks_disabled = Counter(
            "penguinmails_webhooks_disabled",
            "Endpoints disabled for answering 410 or failing for too long.",
            registry=r,
        )

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """What only the database knows, read on scrape: the webhook backlog."""
        row = await pool.fetchrow(SQL["webhook_backlog"])
        if row is not None:
            self.webhook_backlog.labels("pending").set(row["pending"])
            self.webhook_backlog.labels("delivering").set(row["delivering"])
