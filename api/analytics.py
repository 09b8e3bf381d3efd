"""Campaign analytics from the hourly rollup (campaign_stats, migration 0006).

Definitions:
- sent: messages accepted and queued for delivery (`email.sent`, recorded by the enqueue).
- delivered: messages accepted by the receiving server (`email.delivered`), less those that
  bounced afterwards (a DSN through inbound); bounced: `email.bounced` (hard, or expired after
  retries).
- opened / clicked: `total` hits, `unique` (the first hit of that kind for a message),
  `human` (hits not classified as a machine's: mail-privacy proxies, scanners, a hit within
  seconds of delivery), `unique_human` (first hits that were a human's; a message whose first
  open was a proxy's and whose second a person's counts in human but not unique_human).
- Rates are over delivered (opens, clicks, unsubscribes, complaints) or sent (delivery,
  bounces); click_to_open is unique clicks over unique opens. 0 when the base is 0.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Literal

from api.errors import not_found
from api.models import (
    AnalyticsQuery,
    CampaignAnalytics,
    Engagement,
    Overview,
    Rates,
    SeriesPoint,
    period_seconds,
)
from api.routing import API, Call
from penguinmails.queries import load

SQL = load("api")
_COUNTERS = ("total", "uniq", "human", "human_unique")
BOUNCED_LATER = "email.bounced.after_delivery"  # rolled up by migration 0010


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


@API.route(
    "GET",
    "/analytics/campaigns/{id}",
    summary="A campaign's overview and time series",
    tag="Analytics",
    query=AnalyticsQuery,
    response=CampaignAnalytics,
    errors=(404,),
    publishable=True,
)
async def campaign_analytics(call: Call[None, AnalyticsQuery]) -> CampaignAnalytics:
    query = call.query
    campaign_id = call.path_id("id", "Campaign")
    recipients = await call.pool.fetchval(
        SQL["campaign_exists"], call.principal.tenant_id, campaign_id
    )
    if recipients is None:
        raise not_found("Campaign")
    seconds = None if query.period == "all" else period_seconds(query.period)
    interval: Literal["hour", "day"] = query.interval or (
        "hour" if seconds is not None and seconds <= 48 * 3600 else "day"
    )
    since = None
    if seconds is not None:
        step = 3600 if interval == "hour" else 86400
        since = datetime.fromtimestamp((time.time() - seconds) // step * step, UTC)
    rows = await call.pool.fetch(SQL["campaign_stats"], campaign_id, since, interval)

    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_COUNTERS, 0))
    buckets: dict[datetime, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: dict.fromkeys(_COUNTERS, 0))
    )
    for row in rows:
        for name in _COUNTERS:
            totals[row["type"]][name] += row[name]
            buckets[row["bucket"]][row["type"]][name] += row[name]

    def engagement(kind: str) -> Engagement:
        c = totals[kind]
        return Engagement(
            total=c["total"], unique=c["uniq"], human=c["human"], unique_human=c["human_unique"]
        )

    # A message accepted and later bounced (a DSN through inbound) counts as bounced only.
    delivered = totals["email.delivered"]["total"] - totals[BOUNCED_LATER]["total"]
    bounced = totals["email.bounced"]["total"]
    sent = totals["email.sent"]["total"]
    opened, clicked = engagement("email.opened"), engagement("email.clicked")
    unsubscribed = totals["email.unsubscribed"]["uniq"]
    complained = totals["email.complained"]["total"]
    overview = Overview(
        recipients=recipients,
        sent=sent,
        delivered=delivered,
        bounced=bounced,
        deferred=totals["email.deferred"]["total"],
        suppressed=totals["email.suppressed"]["total"],
        failed=totals["email.failed"]["total"],
        opened=opened,
        clicked=clicked,
        unsubscribed=unsubscribed,
        complained=complained,
        rates=Rates(
            delivery_rate=_rate(delivered, sent),
            bounce_rate=_rate(bounced, sent),
            open_rate=_rate(opened.unique, delivered),
            human_open_rate=_rate(opened.unique_human, delivered),
            click_rate=_rate(clicked.unique, delivered),
            click_to_open_rate=_rate(clicked.unique, opened.unique),
            unsubscribe_rate=_rate(unsubscribed, delivered),
            complaint_rate=_rate(complained, delivered),
        ),
    )
    series = [
        SeriesPoint(
            bucket=bucket,
            delivered=kinds["email.delivered"]["total"] - kinds[BOUNCED_LATER]["total"],
            bounced=kinds["email.bounced"]["total"],
            opened=kinds["email.opened"]["total"],
            unique_opened=kinds["email.opened"]["uniq"],
            human_opened=kinds["email.opened"]["human"],
            clicked=kinds["email.clicked"]["total"],
            unique_clicked=kinds["email.clicked"]["uniq"],
            human_clicked=kinds["email.clicked"]["human"],
            unsubscribed=kinds["email.unsubscribed"]["uniq"],
            complained=kinds["email.complained"]["total"],
        )
        for bucket, kinds in sorted(buckets.items())
    ]
    return CampaignAnalytics(
        campaign_id=campaign_id,
        period=query.period,
        interval=interval,
        since=since,
        overview=overview,
        series=series,
    )
