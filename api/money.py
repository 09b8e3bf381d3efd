"""Money as the API shows it: ISO 4217 codes, minor units, and "$2,450.00".

A value is kept exact (Decimal, never float) and in minor units of its currency (cents, or
yen: the currency's digits come from CLDR through babel), so sums are integer sums. Shown
amounts use the currency's symbol and thousands separators in the en-US style of the product
documentation ("$770.00", "€1,234.50", "¥1,234"); a currency without a symbol of its own in
that locale shows its code ("CHF12.00").
"""

from __future__ import annotations

from decimal import Decimal

from babel.numbers import format_currency, get_currency_precision, is_currency

LOCALE = "en_US"
DEFAULT_CURRENCY = "USD"
# The largest value a conversion may carry: its minor units stay far inside a bigint whatever
# the currency's digits.
MAX_VALUE = Decimal(10) ** 12


def known_currency(code: str) -> bool:
    """An ISO 4217 code CLDR knows (upper case)."""
    return len(code) == 3 and code.isascii() and code.isupper() and is_currency(code)


def digits(currency: str) -> int:
    return int(get_currency_precision(currency))


def to_minor(value: Decimal, currency: str) -> int | None:
    """`value` in minor units, or None when it has more decimals than the currency has."""
    scaled = value.scaleb(digits(currency))
    return int(scaled) if scaled == scaled.to_integral_value() else None


def from_minor(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-digits(currency))


def plain(minor: int, currency: str) -> str:
    """The amount as a decimal string with the currency's digits: "19.90", "1200"."""
    return f"{from_minor(minor, currency):f}"


def shown(minor: int, currency: str) -> str:
    """The amount for people: symbol, thousands separators, the currency's digits."""
    return str(format_currency(from_minor(minor, currency), currency, locale=LOCALE))
