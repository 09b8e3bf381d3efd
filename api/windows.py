"""Sending windows as the sequences and campaigns rows hold them (migrations 0028, 0033):
days of week, opening and closing time, zone, dates skipped, and a country whose public
holidays are skipped (computed into the row by penguinmails.windows)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from api.models import WEEKDAYS, SendingWindow, SendingWindowOut
from penguinmails import windows
from penguinmails.queries import load

SQL = load("api", "windows.sql")

COLUMNS = (
    "window_days",
    "window_start",
    "window_end",
    "window_zone",
    "window_skip",
    "window_holidays",
    "window_holiday_dates",
    "window_holidays_until",
)


def window_columns(window: SendingWindow | None) -> tuple[Any, ...]:
    """The window as the columns hold it (COLUMNS' order): ISO days of week, opening,
    closing, zone, dates skipped, the holidays' country, their dates and the last day they
    cover (computed now, from this year)."""
    if window is None:
        return (None, None, None, "UTC", [], None, [], None)
    days = sorted(WEEKDAYS.index(d) + 1 for d in set(window.days))
    dates: list[Any] = []
    until = None
    if window.holidays is not None:
        dates, until = windows.holiday_dates(window.holidays, datetime.now(UTC).date())
    return (
        days,
        window.start,
        window.end,
        window.timezone,
        sorted(set(window.skip_dates)),
        window.holidays,
        dates,
        until,
    )


def stored_columns(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in COLUMNS)


def window_model(row: Mapping[str, Any]) -> SendingWindowOut | None:
    if row["window_days"] is None:
        return None
    return SendingWindowOut(
        days=[WEEKDAYS[d - 1] for d in row["window_days"]],
        start=row["window_start"],
        end=row["window_end"],
        timezone=row["window_zone"],
        skip_dates=row["window_skip"],
        holidays=row["window_holidays"],
        holidays_until=row["window_holidays_until"],
    )


async def set_campaign_window(
    conn: asyncpg.Connection, campaign_pk: int, columns: tuple[Any, ...]
) -> None:
    await conn.execute(SQL["set_campaign_window"], campaign_pk, *columns)


async def into_window(conn: asyncpg.Connection, campaign_pk: int, message_ids: list[int]) -> None:
    """The campaign's messages just queued, due in its window (a no-op without one). A
    send_at beyond the holidays computed so far has them computed through its year first."""
    row = await conn.fetchrow(SQL["campaign_holidays_reach"], campaign_pk, message_ids)
    if row is not None and row["last_due"] is not None:
        last_due = row["last_due"].date() + timedelta(days=14)  # a window or two past it
        if row["window_holidays_until"] is None or row["window_holidays_until"] < last_due:
            dates, until = windows.holiday_dates(
                row["window_holidays"], datetime.now(UTC).date(), last_due
            )
            await conn.execute(SQL["set_campaign_holidays"], campaign_pk, dates, until)
    await conn.execute(SQL["campaign_into_window"], message_ids, campaign_pk)
