"""Campaign analytics from the rollups (campaign_stats and campaign_dimension_stats, kept by
a trigger on events) and the campaign's conversions, for one period.

`GET /analytics/campaigns/{id}` takes the campaign's public id (`campaign_...`); an integer,
an unknown id, or another tenant's or mode's campaign is 404. Counts are of events in the
period (`since` is its start, rounded down to the interval; `all`: the whole lifetime).

- overview: integers, as the product documentation shows them.
  - sent: messages accepted and queued for delivery (`email.sent`, recorded with the message
    by the enqueue; a recipient already suppressed is `suppressed` instead).
  - delivered: messages the receiving server accepted (`email.delivered`, its 250), less
    those that bounced afterwards (a DSN through inbound); bounced: `email.bounced` (hard, or
    expired after retries, or after delivery).
  - opened / clicked: messages opened / clicked (the unique count of `engagement`).
  - complained: complaint reports; unsubscribed and replied: messages unsubscribed from and
    replied to (first of each per message). recipients: messages queued for the campaign
    (all its sends, whatever the period); deferred: deferrals (a message deferred twice counts
    twice); suppressed, failed: messages.
- engagement: opens and clicks as `total` hits, `unique` (the first hit of that kind for a
  message), `human` (hits not classified as a machine's: mail-privacy proxies, scanners, a
  hit within seconds of delivery), `unique_human` (first hits that were a human's; a message
  whose first open was a proxy's and whose second a person's counts in human but not
  unique_human).
- rates: over delivered (opens, clicks, unsubscribes, complaints, replies) or over sent
  (delivery, bounces); click_to_open is unique clicks over unique opens. 0 when the base is 0.
  While a campaign is still sending, delivery_rate is what has been delivered so far.
- devices / countries: the same four counters for opens and clicks, by the hit's
  `device_type`, and by its `country_code` (else its `country`): "unknown" for hits the
  tracker could not place (and every hit recorded before it looked). Most engaged first.
- series: per hour or day, the event counts of the period.
- revenue_impact: from the campaign's conversions (api.conversions) that happened in the
  period.
  - conversion_value: the value of every conversion attributed to the campaign's messages,
    however reported (a secret key naming the message, or a click's token).
  - total_value: the part of it reported with a click's token, i.e. conversions that came
    through the campaign's tracked links and can be credited to the email itself; so
    total_value <= conversion_value.
  - Values in different currencies are never added up: `by_currency` has both figures for
    each currency that has valued conversions, and the top-level figures are those of the
    currency with the most conversions (ties: the larger value, then the code); USD and zero
    when nothing has a value. Amounts are shown with the currency's symbol and thousands
    separators ("$2,450.00", "¥1,234") and given in minor units beside (`..._minor`, cents).
  - conversions: every conversion in the period, with a value or without.
- ai_insights: findings from the campaign's own numbers and the account's history (api.ai:
  the subject that won, best send hours, recipient domains that bounce), each with its
  evidence; an empty list while there are too few messages to say anything.
- variants: per A/B variant of its content (in their order), over the campaign's whole life
  (the rollups have no variant dimension; these come from its messages): messages sent with
  it, delivered, opened, clicked, replied, bounced (distinct messages), and rates over
  delivered (bounces over sent); ab_winner: the A/B test's decision, with its numbers.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from api import money
from api.ai import campaign_insights
from api.errors import not_found, validation_error
from api.models import (
    AnalyticsQuery,
    CampaignAnalytics,
    CountryEngagement,
    CurrencyRevenue,
    DeviceEngagement,
    Engagement,
    EngagementDetail,
    LinkClicks,
    Overview,
    Rates,
    RevenueImpact,
    SeriesPoint,
    TagAnalytics,
    VariantStats,
    period_seconds,
)
from api.routing import API, Call
from api.tiers import Tier, at_least
from penguinmails.ab import campaign_variant_stats
from penguinmails.queries import load

SQL = load("api", "analytics.sql")
_COUNTERS = ("total", "uniq", "human", "human_unique")
BOUNCED_LATER = "email.bounced.after_delivery"  # rolled up by migrations 0010 and 0016
CAMPAIGN_ID = re.compile(r"^campaign_[0-9a-f]{32}$")
TOP_LINKS = 10  # a campaign's most clicked links in its analytics

Counters = dict[str, dict[str, int]]  # event type -> counter -> count


def _counters() -> Counters:
    return defaultdict(lambda: dict.fromkeys(_COUNTERS, 0))


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _engagement(counters: Counters, kind: str) -> Engagement:
    c = counters[kind]
    return Engagement(
        total=c["total"], unique=c["uniq"], human=c["human"], unique_human=c["human_unique"]
    )


@API.route(
    "GET",
    "/analytics/campaigns/{id}",
    summary="A campaign's overview, engagement, rates, devices, countries, series and revenue",
    tag="Analytics",
    query=AnalyticsQuery,
    response=CampaignAnalytics,
    errors=(404,),
    publishable=True,
)
async def campaign_analytics(call: Call[None, AnalyticsQuery]) -> CampaignAnalytics:
    query = call.query
    public_id = call.request.match_info["id"]
    if not CAMPAIGN_ID.match(public_id):
        raise not_found("Campaign")
    campaign = await call.pool.fetchrow(
        SQL["campaign_by_public_id"], public_id, call.principal.tenant_id
    )
    if campaign is None:
        raise not_found("Campaign")
    seconds = None if query.period == "all" else period_seconds(query.period)
    interval: Literal["hour", "day"] = query.interval or (
        "hour" if seconds is not None and seconds <= 48 * 3600 else "day"
    )
    since = None
    if seconds is not None:
        step = 3600 if interval == "hour" else 86400
        since = datetime.fromtimestamp((time.time() - seconds) // step * step, UTC)
    campaign_id = campaign["id"]
    # The campaign itself from the primary (one made a moment ago is found); its numbers,
    # the heavy part, from the replica when there is one.
    rows = await call.reader.fetch(SQL["campaign_stats"], campaign_id, since, interval)
    dimensions = await call.reader.fetch(SQL["campaign_dimensions"], campaign_id, since)
    revenue = await call.reader.fetch(SQL["campaign_revenue"], campaign_id, since)
    links = await call.reader.fetch(SQL["campaign_links"], campaign_id, since, TOP_LINKS)
    variants = (
        await campaign_variant_stats(call.reader, campaign_id, campaign["variants"])
        if campaign["variants"]
        else []
    )

    totals = _counters()
    buckets: dict[datetime, Counters] = defaultdict(_counters)
    for row in rows:
        for name in _COUNTERS:
            totals[row["type"]][name] += row[name]
            buckets[row["bucket"]][row["type"]][name] += row[name]

    overview, rates, opened, clicked = _summary(totals, campaign["recipient_count"])
    series = [
        SeriesPoint(
            bucket=bucket,
            sent=kinds["email.sent"]["total"],
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
            replied=kinds["email.replied"]["uniq"],
            conversions=kinds["goal.converted"]["total"],
        )
        for bucket, kinds in sorted(buckets.items())
    ]
    by_dimension = _by_dimension(dimensions)
    answer = CampaignAnalytics(
        campaign_id=campaign["public_id"],
        period=query.period,
        interval=interval,
        since=since,
        overview=overview,
        rates=rates,
        engagement=EngagementDetail(opened=opened, clicked=clicked),
        series=series,
        devices=[
            DeviceEngagement(device_type=value, opened=o, clicked=c)
            for value, o, c in by_dimension["device"]
        ],
        countries=[
            CountryEngagement(country=value, opened=o, clicked=c)
            for value, o, c in by_dimension["country"]
        ],
        revenue_impact=_revenue_impact(revenue),
        links=[
            LinkClicks(
                url=r["url"],
                clicked=Engagement(
                    total=r["total"],
                    unique=r["uniq"],
                    human=r["human"],
                    unique_human=r["human_unique"],
                ),
            )
            for r in links
        ],
        ai_insights=await campaign_insights(
            call.pool, call.principal.tenant_id, campaign_id, call.state.settings.ai
        )
        if at_least(call.principal.tier, "professional")
        else None,
        variants=[VariantStats(**v) for v in variants],
        ab_winner=campaign["ab_winner"],
    )
    return _within_tier(answer, call.principal.tier)


# Free has limited analytics (the overview and rates); starter basic (with the engagement
# breakdown and the time series); professional advanced (devices, countries, revenue).
_PARTS: dict[str, Tier] = {
    "engagement": "starter",
    "series": "starter",
    "links": "starter",
    "devices": "professional",
    "countries": "professional",
    "revenue_impact": "professional",
    "ai_insights": "professional",
}


@API.route(
    "GET",
    "/analytics/tags/{tag}",
    summary="Analytics of the messages carrying a tag (queued in the period)",
    tag="Analytics",
    query=AnalyticsQuery,
    response=TagAnalytics,
    errors=(404,),  # a tag with a "/" in it reaches no route
    publishable=True,
)
async def tag_analytics(call: Call[None, AnalyticsQuery]) -> TagAnalytics:
    tag = call.request.match_info["tag"]
    if not 1 <= len(tag) <= 64 or not tag.isprintable():
        raise validation_error([{"field": "tag", "message": "1 to 64 printable characters"}])
    seconds = None if call.query.period == "all" else period_seconds(call.query.period)
    since = None if seconds is None else datetime.fromtimestamp(time.time() - seconds, UTC)
    tenant = call.principal.tenant_id
    rows = await call.reader.fetch(SQL["tag_stats"], tenant, tag, since)
    recipients = await call.reader.fetchval(SQL["tag_recipients"], tenant, tag, since)
    totals = _counters()
    for row in rows:
        for name in _COUNTERS:
            totals[row["type"]][name] += row[name]
    overview, rates, opened, clicked = _summary(totals, recipients)
    left_out: dict[str, Tier] = (
        {} if at_least(call.principal.tier, "starter") else {"engagement": "starter"}
    )
    return TagAnalytics(
        tag=tag,
        period=call.query.period,
        since=since,
        overview=overview,
        rates=rates,
        engagement=None if left_out else EngagementDetail(opened=opened, clicked=clicked),
        left_out=left_out,
    )


def _summary(totals: Counters, recipients: int) -> tuple[Overview, Rates, Engagement, Engagement]:
    """The overview and rates from counts by event type (a campaign's rollup, or a tag's)."""
    # A message accepted and later bounced (a DSN through inbound) counts as bounced only.
    sent = totals["email.sent"]["total"]
    delivered = totals["email.delivered"]["total"] - totals[BOUNCED_LATER]["total"]
    bounced = totals["email.bounced"]["total"]
    opened, clicked = _engagement(totals, "email.opened"), _engagement(totals, "email.clicked")
    unsubscribed = totals["email.unsubscribed"]["uniq"]
    complained = totals["email.complained"]["total"]
    replied = totals["email.replied"]["uniq"]
    overview = Overview(
        sent=sent,
        delivered=delivered,
        opened=opened.unique,
        clicked=clicked.unique,
        bounced=bounced,
        complained=complained,
        unsubscribed=unsubscribed,
        replied=replied,
        recipients=recipients,
        deferred=totals["email.deferred"]["total"],
        suppressed=totals["email.suppressed"]["total"],
        failed=totals["email.failed"]["total"],
    )
    rates = Rates(
        delivery_rate=_rate(delivered, sent),
        bounce_rate=_rate(bounced, sent),
        open_rate=_rate(opened.unique, delivered),
        human_open_rate=_rate(opened.unique_human, delivered),
        click_rate=_rate(clicked.unique, delivered),
        click_to_open_rate=_rate(clicked.unique, opened.unique),
        unsubscribe_rate=_rate(unsubscribed, delivered),
        complaint_rate=_rate(complained, delivered),
        reply_rate=_rate(replied, delivered),
    )
    return overview, rates, opened, clicked


def _within_tier(answer: CampaignAnalytics, tier: str) -> CampaignAnalytics:
    """The parts the plan leaves out are null and named in `left_out` with the tier that
    includes them: absent, and said so."""
    left_out = {part: needed for part, needed in _PARTS.items() if not at_least(tier, needed)}
    return answer.model_copy(update=dict.fromkeys(left_out) | {"left_out": left_out})


def _by_dimension(
    rows: Iterable[asyncpg.Record],
) -> dict[str, list[tuple[str, Engagement, Engagement]]]:
    """Per dimension, (value, opens, clicks), the most engaged first (by unique opens, then
    unique clicks, then hits), ties by value."""
    grouped: dict[str, dict[str, Counters]] = defaultdict(lambda: defaultdict(_counters))
    for row in rows:
        counters = grouped[row["dimension"]][row["value"]][row["type"]]
        for name in _COUNTERS:
            counters[name] += row[name]
    result: dict[str, list[tuple[str, Engagement, Engagement]]] = {"device": [], "country": []}
    for dimension, values in grouped.items():
        entries = [
            (value, _engagement(kinds, "email.opened"), _engagement(kinds, "email.clicked"))
            for value, kinds in values.items()
        ]
        entries.sort(key=lambda e: (-e[1].unique, -e[2].unique, -(e[1].total + e[2].total), e[0]))
        result[dimension] = entries
    return result


def _revenue_impact(rows: Iterable[asyncpg.Record]) -> RevenueImpact:
    conversions = 0
    by_currency: list[CurrencyRevenue] = []
    for row in rows:
        conversions += row["conversions"]
        currency = row["currency"]
        if currency is None:  # conversions without a value
            continue
        by_currency.append(
            CurrencyRevenue(
                currency=currency,
                total_value=money.shown(row["total_value_minor"], currency),
                conversion_value=money.shown(row["conversion_value_minor"], currency),
                total_value_minor=row["total_value_minor"],
                conversion_value_minor=row["conversion_value_minor"],
                conversions=row["conversions"],
            )
        )
    by_currency.sort(key=lambda c: (-c.conversions, c.currency))
    main = by_currency[0] if by_currency else None
    currency = main.currency if main else money.DEFAULT_CURRENCY
    total_minor = main.total_value_minor if main else 0
    conversion_minor = main.conversion_value_minor if main else 0
    return RevenueImpact(
        total_value=money.shown(total_minor, currency),
        conversion_value=money.shown(conversion_minor, currency),
        currency=currency,
        total_value_minor=total_minor,
        conversion_value_minor=conversion_minor,
        conversions=conversions,
        by_currency=by_currency,
    )
