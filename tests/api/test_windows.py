"""Sending windows with a country's holidays (sequences and campaigns), and campaigns'
sending windows, with a controlled clock: a sequence's `schedule(..., now=...)`, a campaign's
send_at; never by waiting."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import holidays

from mta.queue import claim
from penguinmails.sequences import Scheduled, schedule
from tests.helpers import Client, assert_error, campaign_body, row_pk

NEW_YORK = ZoneInfo("America/New_York")
WINDOW = {
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "start": "09:00",
    "end": "17:00",
    "timezone": "America/New_York",
}
SEQUENCE: dict[str, Any] = {
    "name": "holidays",
    "steps": [
        {"subject": "Hello", "content": {"text": "One."}},
        {"delay": {"hours": 1}, "content": {"text": "Two."}},
    ],
    "window": {**WINDOW, "holidays": "US"},
}


def _in_window(at: datetime, zone: ZoneInfo = NEW_YORK) -> bool:
    local = at.astimezone(zone)
    return local.isoweekday() <= 5 and 9 <= local.hour < 17


async def test_a_countrys_holidays_are_skipped_and_kept_ahead(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await client.post("/sequences", json=SEQUENCE)
    assert made.status == 201, made.body
    sequence = made.data
    today = datetime.now(UTC).date()
    assert sequence["window"]["holidays"] == "US"
    assert sequence["window"]["holidays_until"] == f"{today.year + 2}-12-31"
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["a@dest.test"]}
    )

    # Step 1 accepted on Christmas Eve (a Thursday) after the window closed: Christmas Day,
    # a Friday, is a US holiday, so step 2 is due on the Monday after.
    eve = datetime(2026, 12, 24, 23, 0, tzinfo=UTC)
    await pool.execute("UPDATE messages SET status = 'sent', sent_at = $1", eve)
    assert await schedule(pool, now=eve) == Scheduled(queued=1)
    due = await pool.fetchval("SELECT max(next_attempt_at) FROM messages")
    assert due.astimezone(NEW_YORK).date() == date(2026, 12, 28) and _in_window(due)

    # Years later, the scheduler's tick computes the holidays again before they run out:
    # Independence Day 2031 (a Friday) is skipped too.
    later = datetime(2031, 7, 3, 22, 0, tzinfo=UTC)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["b@dest.test"]}
    )
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = $1 WHERE recipient = 'b@dest.test'", later
    )
    assert await schedule(pool, now=later) == Scheduled(queued=1)
    row = await pool.fetchrow("SELECT window_holidays_until, window_holiday_dates FROM sequences")
    assert row["window_holidays_until"] == date(2033, 12, 31)
    assert date(2031, 7, 4) in row["window_holiday_dates"]
    assert set(row["window_holiday_dates"]) >= set(
        holidays.country_holidays("US", years=[2031, 2032, 2033])
    )
    due = await pool.fetchval(
        "SELECT max(next_attempt_at) FROM messages WHERE recipient = 'b@dest.test'"
    )
    assert due.astimezone(NEW_YORK).date() == date(2031, 7, 7) and _in_window(due)


async def test_an_unknown_country_is_refused(client: Client) -> None:
    for code, field in (("XX", "window.holidays"), ("US-ZZ", "window.holidays"), ("usa", None)):
        error = assert_error(
            await client.post(
                "/sequences", json={**SEQUENCE, "window": {**WINDOW, "holidays": code}}
            ),
            422,
            "VALIDATION_ERROR",
        )
        assert error["details"][0]["field"] == "window.holidays", (code, field)
    sub = await client.post(
        "/sequences", json={**SEQUENCE, "window": {**WINDOW, "holidays": "US-CA"}}
    )
    assert sub.status == 201 and sub.data["window"]["holidays"] == "US-CA"


async def test_no_campaign_message_is_due_outside_its_window(
    client: Client, pool: asyncpg.Pool
) -> None:
    """Weekdays 09:00-17:00 in New York, US holidays skipped; one recipient is a contact in
    Tokyo, one says Berlin in its personalization. Sent for the evening before next year's
    Thanksgiving (a Wednesday): every message is due on the Friday (the Thursday is a
    holiday), in its recipient's window, spread across it; the MTA's claim takes none now."""
    year = datetime.now(UTC).year + 1
    [thanksgiving] = holidays.country_holidays("US", years=[year]).get_named("Thanksgiving Day")
    friday = thanksgiving + timedelta(days=1)
    await client.post(
        "/contacts", json={"email": "tokyo@dest.test", "custom_fields": {"timezone": "Asia/Tokyo"}}
    )
    recipients = [{"email": f"p{i}@dest.test"} for i in range(30)] + [
        {"email": "tokyo@dest.test"},
        {"email": "berlin@dest.test", "personalization": {"timezone": "Europe/Berlin"}},
    ]
    body = campaign_body(
        subject="Hi",
        content={"text": "Hello"},
        recipients=recipients,
        window={**WINDOW, "holidays": "US"},
    )
    made = await client.post("/campaigns", json=body)
    assert made.status == 201, made.body
    assert made.data["window"]["holidays"] == "US"
    assert made.data["window"]["start"] == "09:00:00"
    send_at = datetime.combine(thanksgiving, datetime.min.time(), UTC) - timedelta(hours=1)
    sent = await client.post(
        f"/campaigns/{made.data['id']}/send", json={"send_at": send_at.isoformat()}
    )
    assert sent.status == 202, sent.body
    rows = await pool.fetch(
        "SELECT recipient, next_attempt_at FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made.data["id"]),
    )
    assert len(rows) == 32
    zones = {
        "tokyo@dest.test": ZoneInfo("Asia/Tokyo"),
        "berlin@dest.test": ZoneInfo("Europe/Berlin"),
    }
    for row in rows:
        zone = zones.get(row["recipient"], NEW_YORK)
        due = row["next_attempt_at"]
        assert _in_window(due, zone), (row["recipient"], due.astimezone(zone))
        assert due.astimezone(zone).date() == friday, row["recipient"]
    spread = [r["next_attempt_at"] for r in rows if r["recipient"].startswith("p")]
    assert len(set(spread)) == len(spread)
    assert max(spread) - min(spread) > timedelta(hours=2)  # not a burst at the opening
    assert await claim(pool, 1000, "test-worker", 60) == []

    # Paused for ten hours: resuming shifts every message by the pause, which would take
    # them past Friday's closing; they are moved into the next window (Monday) instead.
    campaign_pk = await row_pk(pool, "campaigns", made.data["id"])
    await client.post(f"/campaigns/{made.data['id']}/pause")
    await pool.execute(
        "UPDATE campaigns SET paused_at = now() - interval '10 hours' WHERE id = $1", campaign_pk
    )
    resumed = await client.post(f"/campaigns/{made.data['id']}/resume")
    assert resumed.status == 200, resumed.body
    for row in await pool.fetch(
        "SELECT recipient, next_attempt_at FROM messages WHERE campaign_id = $1", campaign_pk
    ):
        zone = zones.get(row["recipient"], NEW_YORK)
        assert _in_window(row["next_attempt_at"], zone), row["recipient"]

    # Sent for a holiday years past the ones computed at creation: they are computed through
    # its year first (Christmas Day 2040 is a Tuesday: due on the Wednesday).
    far = await client.post(
        "/campaigns",
        json=campaign_body(
            name="far",
            subject="Hi",
            content={"text": "x"},
            recipients=recipients[:2],
            window={**WINDOW, "holidays": "US"},
        ),
    )
    christmas = datetime(2040, 12, 25, 12, 0, tzinfo=UTC)
    await client.post(f"/campaigns/{far.data['id']}/send", json={"send_at": christmas.isoformat()})
    far_due = await pool.fetch(
        "SELECT next_attempt_at FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", far.data["id"]),
    )
    assert {r["next_attempt_at"].astimezone(NEW_YORK).date() for r in far_due} == {
        date(2040, 12, 26)
    }

    # Inside the window, a message is due when sent.
    # The Tuesday after, 10:00 in New York.
    inside = datetime.combine(friday + timedelta(days=4), datetime.min.time(), UTC) + timedelta(
        hours=15
    )
    again = await client.post(
        "/campaigns",
        json=campaign_body(
            name="inside",
            subject="Hi",
            content={"text": "x"},
            recipients=recipients[:3],
            window=WINDOW,
        ),
    )
    await client.post(f"/campaigns/{again.data['id']}/send", json={"send_at": inside.isoformat()})
    due = await pool.fetch(
        "SELECT next_attempt_at FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", again.data["id"]),
    )
    assert {r["next_attempt_at"] for r in due} == {inside}

    # A window can be changed while a draft, and removed.
    draft = await client.post("/campaigns", json=campaign_body(window=WINDOW))
    changed = await client.patch(f"/campaigns/{draft.data['id']}", json={"window": None})
    assert changed.status == 200 and changed.data["window"] is None
