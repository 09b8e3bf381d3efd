"""Conversions: goals reached after a message, and the revenue they bring.

`POST /api/v1/conversions` records one, attributed to a message (and so to its campaign):
- with a secret key, naming the message (`message_id`: msg_...) or a click's token;
- without any key, from the landing page of a tracked click: the tracker's redirect added
  `pm_cv=<token>` ([tracker] conversion_param) to the page's URL, and the page posts it back
  (`{"token", "goal", "value", "currency"}`). The route answers CORS for any origin, since
  that page is on the customer's site. A token is signed with the server keys, names the
  message and the click, expires 30 days after the click and is good for one conversion:
  a second use is 409 (penguinmails.conversions; only a hash of it is stored). A request
  without a key is counted against the rate limit of the message's tenant row, in a bucket
  of its own ("conversion"), so a busy shop cannot spend its owner's API budget.

A conversion belongs to its message's tenant row: a test-mode message's conversions are
test-mode objects, seen only with test keys. Each one records `goal.converted` and, when it
has a value above zero, `revenue.recorded` (with the value as a decimal string and in minor
units, and its currency), in the same transaction as its row. `GET /api/v1/conversions` lists
them, newest first, optionally for one campaign. Campaign analytics sums them into
`revenue_impact` (api.analytics).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints
from pydantic_core import PydanticCustomError

from api import money
from api.envelope import EXTRA_HEADERS
from api.errors import ApiError, conflict, not_found, unauthorized, validation_error
from api.models import LIVEMODE, ListQuery, Owned, Page, Request
from api.ratelimit import rate_limited
from api.routing import API, Call, decode_cursor, keyset_page
from api.tiers import at_least, tier_required
from penguinmails import conversions
from penguinmails.queries import load
from penguinmails.tokens import BadToken

SQL = load("api", "conversions.sql")

RATE_BUCKET = "conversion"
# A conversion reported as happening later than this from now is a clock or a typo.
MAX_FUTURE = timedelta(hours=1)
MAX_METADATA_BYTES = 4096
_CONTROL_CHARACTERS = frozenset(chr(c) for c in (*range(0x20), 0x7F))

# ---------------------------------------------------------------------------------------------
# Models


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "metadata", "at most {size} bytes of JSON", {"size": MAX_METADATA_BYTES}
        )
    return value


def _goal(value: str) -> str:
    if not _CONTROL_CHARACTERS.isdisjoint(value):
        raise PydanticCustomError("goal", "must not contain control characters")
    return value


def _currency(value: str) -> str:
    code = value.upper()
    if not money.known_currency(code):
        raise PydanticCustomError("currency", "must be an ISO 4217 currency code such as USD")
    return code


class ConversionCreate(Request):
    """A goal reached. Name the message (secret key required) or give the click's token (the
    `pm_cv` parameter of the landing page's URL; no key needed): one of the two."""

    message_id: Annotated[str, StringConstraints(pattern=r"^msg_[0-9a-f]{32}$")] | None = None
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    goal: Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_goal)]
    value: (
        Annotated[Decimal, Field(ge=0, le=money.MAX_VALUE, max_digits=24, allow_inf_nan=False)]
        | None
    ) = Field(
        default=None,
        description="At least 0, a JSON number or a decimal string, with no more decimals "
        "than the currency has (2 for USD, 0 for JPY).",
    )
    currency: Annotated[
        str, StringConstraints(min_length=3, max_length=3), AfterValidator(_currency)
    ] = Field(default=money.DEFAULT_CURRENCY, description="ISO 4217, of the value.")
    occurred_at: AwareDatetime | None = Field(default=None, description="Omitted: now.")
    metadata: Annotated[dict[str, Any], AfterValidator(_metadata)] = Field(default_factory=dict)


class ConversionListQuery(ListQuery):
    campaign_id: Annotated[str, StringConstraints(pattern=r"^campaign_[0-9a-f]{32}$")] | None = (
        Field(default=None, description="Only this campaign's conversions.")
    )


class Conversion(Owned):
    id: str
    message_id: str
    campaign_id: str | None
    goal: str
    value: str | None = Field(description="A decimal string with the currency's digits.")
    value_minor: int | None = Field(description="The value in minor units (cents).")
    currency: str | None = Field(description="With a value only.")
    source: Literal["api", "click"] = Field(
        description="click: reported with a click's token, so attributed to that click."
    )
    link_index: int | None
    clicked_at: datetime | None
    metadata: dict[str, Any]
    occurred_at: datetime
    created_at: datetime


def _conversion(row: asyncpg.Record) -> Conversion:
    values = dict(row)
    if row["value_minor"] is not None:
        values["value"] = money.plain(row["value_minor"], row["currency"])
    return Conversion(**values)


# ---------------------------------------------------------------------------------------------
# Routes


def _invalid(field: str, message: str) -> ApiError:
    return validation_error([{"field": field, "message": message}])


@API.route(
    "POST",
    "/conversions",
    summary="Record a conversion (a secret key, or a click's token from its landing page)",
    tag="Conversions",
    body=ConversionCreate,
    response=Conversion,
    status=201,
    errors=(404, 409),
    anonymous=True,
    cors=True,
    tier="professional",
)
async def create_conversion(call: Call[ConversionCreate, None]) -> Conversion:
    body = call.body
    principal = call.principal_or_none
    if (body.message_id is None) == (body.token is None):
        raise _invalid("message_id", "give message_id or token (one of them)")
    value_minor = None
    if body.value is not None:
        value_minor = money.to_minor(body.value, body.currency)
        if value_minor is None:
            raise _invalid(
                "value",
                f"at most {money.digits(body.currency)} decimals for {body.currency}",
            )
    now = datetime.now(UTC)
    if body.occurred_at is not None and body.occurred_at > now + MAX_FUTURE:
        raise _invalid("occurred_at", "must not be in the future")

    click = None
    if body.token is not None:
        try:
            click = conversions.verify(call.state.link_signer, body.token, time.time())
        except conversions.ExpiredToken:
            raise _invalid(
                "token", "expired (a token is good for 30 days after the click)"
            ) from None
        except BadToken:
            raise _invalid("token", "not a conversion token of this server") from None
        row = await call.pool.fetchrow(SQL["conversion_message"], click.queue_id)
        if row is None or (principal is not None and row["tenant_id"] != principal.tenant_id):
            raise not_found("Message")
    elif principal is None:
        raise unauthorized("A conversion naming message_id needs a secret API key")
    else:
        row = await call.pool.fetchrow(
            SQL["conversion_message_by_public_id"], body.message_id, principal.tenant_id
        )
        if row is None:
            raise not_found("Message")

    if principal is None:
        # No key: the account's plan must include conversions, as for a keyed call.
        if not at_least(row["tier"], "professional"):
            raise tier_required("professional", row["tier"], "Conversion tracking")
        # The message's tenant row pays, in a bucket apart from its keys'.
        usage = await call.state.limiter.hit(
            row["tenant_id"], row["tier"], bucket=RATE_BUCKET, test=row["mode"] == "test"
        )
        call.request[EXTRA_HEADERS].update(usage.headers())
        if usage.exceeded:
            raise rate_limited(usage)
        LIVEMODE.set(row["mode"] == "live")

    recorded = await call.pool.fetchrow(
        SQL["record_conversion"],
        row["id"],
        body.goal,
        body.value,
        value_minor,
        body.currency if body.value is not None else None,
        "api" if click is None else "click",
        None if click is None else click.link_index,
        None if click is None else datetime.fromtimestamp(click.clicked_at, UTC),
        None if click is None else click.token_hash,
        body.metadata,
        body.occurred_at,
        None if value_minor is None else money.plain(value_minor, body.currency),
    )
    if recorded is None:
        if click is not None:
            raise conflict("This conversion token has been used already")
        raise not_found("Message")
    return _conversion(recorded)


@API.route(
    "GET",
    "/conversions",
    summary="List conversions, newest first, optionally for one campaign",
    tag="Conversions",
    query=ConversionListQuery,
    response=Page[Conversion],
    tier="professional",
)
async def list_conversions(call: Call[None, ConversionListQuery]) -> Page[Conversion]:
    query = call.query
    rows = await call.pool.fetch(
        SQL["list_conversions"],
        call.principal.tenant_id,
        decode_cursor(query.cursor, numeric=False),
        query.limit + 1,
        query.campaign_id,
    )
    return keyset_page(Page[Conversion], rows, query.limit, _conversion)
