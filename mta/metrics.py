"""What the MTA exposes on /metrics.

Destination domains are a label only where the operator has a throttle rule for them (the
big mailbox providers); every other domain counts as "other", so a bulk run to 100,000
small domains cannot blow up the series count.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mta.queue import SQL
from penguinmails.config import MtaSettings
from penguinmails.status import SQL as STATUS_SQL

SITES_SHOWN = 20  # the deepest sites get a series each; a site is a label only while deep


class MtaMetrics:
    def __init__(self, settings: MtaSettings) -> None:
        self._named = set(settings.throttle)
        self.registry = CollectorRegistry()
        r = self.registry
        self.outcomes = Counter(
            "penguinmails_mta_messages",
            "Delivery outcomes by status (sent, deferred, bounced, failed, suppressed) and "
            "destination domain (named rule domains, else other).",
            ["status", "domain"],
            registry=r,
        )
        self.smtp_seconds = Histogram(
            "penguinmails_mta_smtp_seconds",
            "Time from asking for a connection to the final reply of one message's transaction.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.claim_batch = Histogram(
            "penguinmails_mta_claim_batch_size",
            "Messages per claim.",
            buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.in_flight = Gauge(
            "penguinmails_mta_in_flight",
            "Messages leased by this process, not yet committed.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "penguinmails_mta_queue_depth",
            "Messages in the queue by status (all processes).",
            ["status"],
            registry=r,
        )

        self.site_depth = Gauge(
            "penguinmails_mta_site_queue_depth",
            f"Messages waiting (queued, deferred, sending) toward each of the {SITES_SHOWN} "
            "deepest sites (MX sets), with their provider (all processes).",
            ["site", "provider"],
            registry=r,
        )
        self.provider_depth = Gauge(
            "penguinmails_mta_provider_queue_depth",
            "Messages waiting toward each provider of the shaping rules ('none': sites of no "
            "provider, and domains not yet resolved).",
            ["provider"],
            registry=r,
        )
        self.held = Gauge(
            "penguinmails_mta_shaping_held_seconds",
            "Seconds left of each suspension or throttle an automation rule set, by scope "
            "key (site:, provider:, tenant:, campaign:) and action.",
            ["key", "action", "rule"],
            registry=r,
        )

    def domain_label(self, domain: str) -> str:
        return domain if domain in self._named else "other"

    async def refresh(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(SQL["queue_depth_by_status"])
        for status in ("queued", "sending", "deferred"):
            self.queue_depth.labels(status).set(0)
        for row in rows:
            self.queue_depth.labels(row["status"]).set(row["messages"])
        sites = await pool.fetch(STATUS_SQL["depth_by_site"], 10_000)
        self.site_depth.clear()
        self.provider_depth.clear()
        providers: dict[str, int] = {}
        for index, site in enumerate(sites):
            waiting = site["queued"] + site["deferred"] + site["sending"]
            provider = site["provider"] or "none"
            providers[provider] = providers.get(provider, 0) + waiting
            if index < SITES_SHOWN:
                self.site_depth.labels(site["site"], provider).set(waiting)
        for provider, waiting in providers.items():
            self.provider_depth.labels(provider).set(waiting)
        held = await pool.fetch(STATUS_SQL["held_seconds"])
        self.held.clear()
        for row in held:
            self.held.labels(row["key"], row["action"], row["rule"]).set(row["seconds"])
