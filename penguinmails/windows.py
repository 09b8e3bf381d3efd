"""Sending windows' holidays: a window that names a country skips its public holidays.

The dates come from the `holidays` library (maintained rules for ~200 countries and their
subdivisions) and are stored with the window (window_holiday_dates, migration 0033) for
HOLIDAY_YEARS calendar years from the year they are computed in, so the database's
next_in_window skips them like any other date. `extend` runs on the scheduler's tick (and
its `schedule`): a window whose dates end within EXTEND_BEFORE is computed again from the
current year, so a sequence that runs for years never runs out of holidays.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import asyncpg
import holidays

from penguinmails.queries import load

SQL = load("penguinmails", "sql/windows.sql")

HOLIDAY_YEARS = 3
EXTEND_BEFORE = timedelta(days=365)


class UnknownHolidays(ValueError):
    """Not a country (or subdivision) the holidays library knows."""


def holiday_dates(code: str, today: date, through: date | None = None) -> tuple[list[date], date]:
    """The public holidays of `code` ("US", "US-CA") from `today`'s year on, for
    HOLIDAY_YEARS calendar years (or through the year of `through` if later), and the last
    day they cover."""
    country, _, subdivision = code.partition("-")
    last = max(today.year + HOLIDAY_YEARS - 1, through.year if through else 0)
    years = list(range(today.year, last + 1))
    try:
        found = holidays.country_holidays(country, subdiv=subdivision or None, years=years)
    except NotImplementedError as exc:
        raise UnknownHolidays(str(exc)) from None
    return sorted(found.keys()), date(years[-1], 12, 31)


def check(code: str) -> str:
    """`code` if the library knows it (raises UnknownHolidays otherwise)."""
    holiday_dates(code, date.today())
    return code


async def extend(conn: asyncpg.Connection | asyncpg.Pool, now: datetime | None = None) -> int:
    """Compute again the holidays of every window whose dates run out within EXTEND_BEFORE
    of `now` (the database's clock if None); answers how many windows."""
    clock = now or await conn.fetchval("SELECT now()")
    today = clock.date()
    extended = 0
    for table in ("sequences", "campaigns"):
        for row in await conn.fetch(SQL[f"stale_{table}"], today + EXTEND_BEFORE):
            dates, until = holiday_dates(row["window_holidays"], today)
            await conn.execute(SQL[f"set_{table}_holidays"], row["id"], dates, until)
            extended += 1
    return extended
