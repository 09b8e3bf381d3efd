"""Request and response models: the one definition of what the API accepts and returns.

The same classes validate requests, shape responses and generate the OpenAPI document
(api.openapi), so the document cannot drift from the server. Request models forbid unknown
fields: a typo in `track_opens` is an error the client sees, not a setting silently ignored.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import date, datetime, time
from email.utils import parseaddr
from typing import Annotated, Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from api.tiers import Tier
from penguinmails import windows
from penguinmails.messages import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_PERSONALIZATION_BYTES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    InvalidMessage,
    address_domain,
    owned_header,
)
from penguinmails.webhooks.endpoints import (
    MAX_ROTATION_OVERLAP_SECONDS,
    ROTATION_OVERLAP_SECONDS,
    Endpoint,
)

MAX_RECIPIENTS = 10_000
# Envelope recipients of one send (to + cc + bcc): each becomes its own message row, and the
# visible To and Cc lists are repeated in every one of them.
MAX_SEND_RECIPIENTS = 50
MAX_REPLY_TO = 10
MAX_BATCH = 500
MAX_BODY_CHARS = 1_000_000
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,75}$")


def _email(value: str) -> str:
    try:
        address_domain(value, "email")
    except InvalidMessage:
        raise PydanticCustomError("email", "Invalid email format") from None
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise PydanticCustomError("headers", "at most 50 headers")
    for name, text in value.items():
        if not _HEADER_NAME.match(name):
            raise PydanticCustomError("headers", "invalid header name {name!r}", {"name": name})
        if owned_header(name):
            raise PydanticCustomError(
                "headers",
                "{name} is set by PenguinMails and cannot be given",
                {"name": name},
            )
        if "\r" in text or "\n" in text or len(text) > 998:
            raise PydanticCustomError(
                "headers",
                "header {name} must be one line of at most 998 characters",
                {"name": name},
            )
    return value


Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
]
Name = Annotated[str, StringConstraints(max_length=200)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\s,]+$")]
Headers = Annotated[dict[str, str], AfterValidator(_headers)]
Body = Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS)]
# An id the API gave out (`campaign_…`); the prefix is checked where the kind is known.
PublicId = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Query(BaseModel):
    """Query strings are lenient about unknown parameters (caches and proxies add some)."""

    model_config = ConfigDict(extra="ignore")


class Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


# The mode of the request being served, set by the dispatcher once the caller is known.
LIVEMODE: ContextVar[bool] = ContextVar("livemode")


def _livemode() -> bool:
    return LIVEMODE.get()


class Owned(Response):
    """A tenant-owned object: it belongs to exactly one mode, the caller's (Stripe's model)."""

    livemode: bool = Field(
        default_factory=_livemode,
        description="true for a live object, false for a test-mode one.",
    )


# ---------------------------------------------------------------------------------------------
# Shared parts


class Sender(Request):
    email: Email
    name: Name = ""


def _sender(value: Any) -> Any:
    """`"Name <addr>"` and `"addr"` are the same sender as `{"email", "name"}`."""
    if isinstance(value, str):
        name, address = parseaddr(value)
        if not address or "@" not in address or ("<" in value) != value.rstrip().endswith(">"):
            raise PydanticCustomError(
                "sender", 'must be "address", "Name <address>" or {"email", "name"}'
            )
        return {"email": address, "name": name}
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "sender", 'must be "address", "Name <address>" or {"email", "name"}'
        )
    return value


def _one_or_many(value: Any) -> Any:
    """One address (any form) is a list of one."""
    return [value] if isinstance(value, str | dict) else value


Address = Annotated[Sender, BeforeValidator(_sender, json_schema_input_type=str | Sender)]


def _addresses(limit: int, what: str, min_length: int = 0) -> Any:
    if min_length:  # required: a default would skip the length check
        return Field(
            min_length=min_length,
            max_length=limit,
            description=f'{what}: an address, "Name <address>" or {{email, name}}, or a list '
            f"of them (at most {limit}).",
        )
    return Field(
        default_factory=list,
        min_length=min_length,
        max_length=limit,
        description=f'{what}: an address, "Name <address>" or {{email, name}}, or a list of '
        f"them (at most {limit}).",
    )


AddressList = Annotated[
    list[Address],
    BeforeValidator(_one_or_many, json_schema_input_type=str | Sender | list[str | Sender]),
]


def _no_controls(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise PydanticCustomError("control", "must not contain control characters")
    return value


MessageTag = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TAG_CHARS), AfterValidator(_no_controls)
]
MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS),
    AfterValidator(_no_controls),
]


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise PydanticCustomError("metadata", "at most {n} keys", {"n": MAX_METADATA_KEYS})
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "metadata", "at most {size} bytes of JSON", {"size": MAX_METADATA_BYTES}
        )
    return value


# Flat: a value is a string, number or bool (strict, so "1" stays a string and 1 a number).
Metadata = Annotated[
    dict[MetadataKey, StrictStr | StrictBool | StrictInt | StrictFloat],
    AfterValidator(_metadata),
]


From = Annotated[
    Sender,
    BeforeValidator(_sender, json_schema_input_type=str | Sender),
    Field(
        description='An address, "Name <address>", or {email, name}. Omitted: the default '
        "sender of the caller's mode (PUT /api/v1/settings/sender)."
    ),
]


class SenderOut(Response):
    email: str
    name: str = ""


class Content(Request):
    html: Body | None = None
    text: Body | None = None
    template_id: str | None = Field(
        default=None,
        max_length=100,
        description="A stored template (GET /api/v1/templates); html, text and subject given "
        "here win over the template's, part by part.",
    )


def _content(value: Any) -> Any:
    """A bare string is the html part."""
    return {"html": value} if isinstance(value, str) else value


ContentIn = Annotated[
    Content,
    BeforeValidator(_content, json_schema_input_type=str | Content),
    Field(description="The html as a string, or {html, text, template_id}."),
]


class DefaultSenderSet(Request):
    from_: From = Field(alias="from")


class DefaultSender(Owned):
    email: str | None = Field(description="null: none (live mode without a sending domain).")
    name: str
    source: Literal["set", "domain", "sandbox", "none"] = Field(
        description="set: chosen with PUT; domain: noreply@ the first sending domain; "
        "sandbox: test mode's address when there is no domain; none: sends must give `from`."
    )


class ContentOut(Response):
    html: str | None
    text: str | None
    template_id: str | None = Field(
        default=None, description="The template the content was made from, if any."
    )
    template_version: int | None = None


# A recipient's address is checked with the rest of its row (api.senders.check_draft), so
# one response lists every bad row of a 10,000-recipient request, whatever is wrong with each.
RecipientEmail = Annotated[
    str,
    StringConstraints(min_length=1, max_length=254),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
]


def _personalization(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > MAX_PERSONALIZATION_BYTES:
        raise PydanticCustomError(
            "personalization", "at most {size} bytes of JSON", {"size": MAX_PERSONALIZATION_BYTES}
        )
    return value


Personalization = Annotated[dict[str, Any], AfterValidator(_personalization)]


class Recipient(Request):
    email: RecipientEmail
    personalization: Personalization = Field(default_factory=dict)


class CampaignSettings(Request):
    """Tracking is on by default; `analytics_enabled: false` switches both kinds off."""

    analytics_enabled: bool = True
    track_opens: bool = True
    track_clicks: bool = True
    plain_text: bool = Field(
        default=False,
        description="Send the text part alone (given, or derived from the html): no html "
        "part, so no open pixel and no rewritten links. Cold first touches land better so.",
    )
    ai_optimization: bool = Field(
        default=False,
        description="Analyse the content when the campaign is created (as POST "
        "/api/v1/ai/optimize-content does) and answer the result in `ai_optimization`; "
        "never changes the content.",
    )
    egress_pool: str | None = Field(
        default=None,
        max_length=100,
        description="The operator's pool of sending IPs its messages leave from ([mta.pools] "
        "of the server's configuration); unset: your account's pool, else the default.",
    )
    identities: list[Annotated[str, StringConstraints(max_length=100)]] = Field(
        default_factory=list,
        max_length=100,
        description="Sending identities (idn_ ids) to send through, rotating over the "
        "recipients; a sequence's contact keeps its first step's identity for every follow-up. "
        "Each message then is from the identity's address, with its signature, at its pace.",
    )


class Tracking(Request):
    """The same names as a campaign's settings."""

    track_opens: bool = True
    track_clicks: bool = True
    plain_text: bool = Field(
        default=False,
        description="Send the text part alone (given, or derived from the html): no html "
        "part, so no open pixel and no rewritten links.",
    )


T = TypeVar("T")


class Page(Response, Generic[T]):
    items: list[T]
    has_more: bool
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ListQuery(Query):
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class Deleted(Response):
    id: str
    deleted: Literal[True] = True


# ---------------------------------------------------------------------------------------------
# Campaigns

CampaignStatus = Literal["draft", "scheduled", "sending", "paused", "completed", "cancelled"]


Subject = Annotated[str, StringConstraints(min_length=1, max_length=998)]


# A/B variants (campaigns and sequence steps)
MAX_VARIANTS = 10
VariantName = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class VariantIn(Request):
    """One version of the content; each part left out is the base content's."""

    name: VariantName = Field(description="Unique among the variants, e.g. A, B.")
    weight: int = Field(
        default=1, ge=1, le=10_000, description="Share of the recipients: weight / sum of weights."
    )
    subject: Subject | None = None
    html: Body | None = None
    text: Body | None = None
    template_id: str | None = Field(
        default=None,
        max_length=100,
        description="A stored template; its current version fills the parts not given here.",
    )


def _unique_names(variants: list[VariantIn]) -> list[VariantIn]:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise PydanticCustomError("variants", "variant names must be unique")
    return variants


Variants = Annotated[list[VariantIn], Field(max_length=MAX_VARIANTS), AfterValidator(_unique_names)]


class ABTest(Request):
    """The winner takes the remaining sends once every variant has `min_sample` messages
    delivered at least `wait_hours` ago (so replies and clicks had time to come in)."""

    winner_by: Literal["reply_rate", "click_rate", "open_rate"]
    min_sample: int = Field(default=100, ge=1, le=1_000_000)
    wait_hours: float = Field(default=4, ge=0, le=30 * 24)
    test_fraction: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Campaigns: the share of recipients sent the variants first; the rest are "
        "held (status held) and sent the winner. Sequences: unused (every step's messages "
        "before the decision are the test).",
    )


class VariantOut(Response):
    name: str
    weight: int
    subject: str | None
    html: str | None
    text: str | None
    template_id: str | None = None
    template_version: int | None = None


class VariantScore(Response):
    name: str
    sample: int = Field(description="Messages delivered at least wait_hours before the decision.")
    rate: float


class ABWinner(Response):
    variant: str
    decided_at: datetime
    winner_by: str
    variants: list[VariantScore] = Field(description="The numbers the decision was made on.")


class VariantStats(Response):
    name: str
    weight: int
    sent: int = Field(description="Messages created with this variant.")
    delivered: int = Field(description="Accepted by the receiving server (and not bounced).")
    opened: int
    clicked: int
    replied: int
    bounced: int
    delivery_rate: float
    open_rate: float = Field(description="Over delivered, as are click and reply rates.")
    click_rate: float
    reply_rate: float
    bounce_rate: float = Field(description="Over sent.")


class CampaignCreate(Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    subject: Subject | None = Field(
        default=None, description="Required unless content.template_id has one."
    )
    content: ContentIn
    recipients: list[Recipient] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    settings: CampaignSettings = Field(default_factory=CampaignSettings)
    from_: From | None = Field(default=None, alias="from")
    headers: Headers = Field(default_factory=dict)
    tags: list[MessageTag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Given to each of its messages."
    )
    metadata: Metadata = Field(default_factory=dict, description="Given to each of its messages.")
    send_at: AwareDatetime | None = Field(
        default=None, description="The schedule `send` uses when it is given no send_at."
    )
    variants: Variants = Field(
        default_factory=list,
        description="A/B variants of the subject and content; each recipient gets one by "
        "weight when its message is queued.",
    )
    ab_test: ABTest | None = Field(default=None, description="Let a winner take the rest.")
    window: SendingWindow | None = Field(
        default=None,
        description="Omitted: messages go out when due. A message due outside the window "
        "is due in the next one (in the recipient's zone), spread across it.",
    )


class CampaignUpdate(Request):
    """Only the fields given change; allowed while the campaign is a draft."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    subject: Annotated[str, StringConstraints(min_length=1, max_length=998)] | None = None
    content: ContentIn | None = None
    recipients: list[Recipient] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    settings: CampaignSettings | None = None
    from_: From | None = Field(default=None, alias="from")
    headers: Headers | None = None
    tags: list[MessageTag] | None = Field(default=None, max_length=MAX_TAGS)
    metadata: Metadata | None = None
    send_at: AwareDatetime | None = None
    variants: Variants | None = None
    ab_test: ABTest | None = None
    window: SendingWindow | None = Field(default=None, description="null: no window.")


class CampaignSend(Request):
    send_at: AwareDatetime | None = Field(
        default=None, description="Omitted: the campaign's own send_at, else now."
    )


class Campaign(Owned):
    id: str
    name: str
    subject: str
    from_: SenderOut | None = Field(alias="from")
    content: ContentOut
    settings: dict[str, Any]
    headers: dict[str, str]
    tags: list[str]
    metadata: dict[str, Any]
    recipient_count: int
    status: CampaignStatus
    sandbox: bool
    send_at: datetime | None
    started_at: datetime | None
    paused_at: datetime | None
    paused_reason: str | None = Field(
        default=None,
        description="Why the circuit breaker paused it (null for a pause through the API); "
        "resuming clears it.",
    )
    completed_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    variants: list[VariantOut] = Field(default_factory=list)
    ab_test: dict[str, Any] | None = None
    ab_winner: ABWinner | None = Field(
        default=None, description="The A/B test's decision, once made."
    )
    window: SendingWindowOut | None = None
    ai_optimization: CampaignAiOptimization | None = Field(
        default=None,
        description="In the answer to its creation when settings.ai_optimization is on: the "
        "content analysis (POST /api/v1/ai/optimize-content) as suggestions; null otherwise.",
    )


# ---------------------------------------------------------------------------------------------
# Sends


class AttachmentIn(Request):
    filename: str = Field(
        min_length=1,
        max_length=255,
        description="Shown to the recipient; no path separators or control characters.",
    )
    content: str = Field(
        description="The file, base64. At most 10 MB decoded each, 25 MB per message."
    )
    content_type: str = Field(
        max_length=255,
        description="type/subtype, checked against the bytes where the type has a signature "
        "(a declared image/png must be a PNG).",
    )
    disposition: Literal["attachment", "inline"] = Field(
        default="attachment",
        description="inline: shown in the html where it says cid:<content_id>.",
    )
    content_id: str | None = Field(
        default=None, max_length=250, description="Required for an inline attachment."
    )


class SendRequest(Request):
    from_: From | None = Field(default=None, alias="from")
    to: AddressList = _addresses(MAX_SEND_RECIPIENTS, "Shown in To", min_length=1)
    cc: AddressList = _addresses(MAX_SEND_RECIPIENTS, "Shown in Cc")
    bcc: AddressList = _addresses(MAX_SEND_RECIPIENTS, "Sent the same message, shown in no header")
    reply_to: AddressList = _addresses(MAX_REPLY_TO, "Written as Reply-To")
    tags: list[MessageTag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="Your labels: shown on the message and in every webhook of it.",
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description=f"Your data, a flat object of at most {MAX_METADATA_KEYS} keys (strings, "
        f"numbers, booleans; {MAX_METADATA_BYTES} bytes of JSON): shown on the message and "
        "in every webhook of it.",
    )
    subject: Subject | None = Field(
        default=None, description="Required unless content.template_id has one."
    )
    content: ContentIn
    tracking: Tracking = Field(default_factory=Tracking)
    personalization: Personalization = Field(default_factory=dict)
    headers: Headers = Field(default_factory=dict)
    send_at: AwareDatetime | None = None
    priority: Literal["transactional", "bulk"] = Field(
        default="transactional",
        description="transactional (a receipt, a password reset) is delivered before bulk "
        "(campaigns; or a send that is one of many) whatever else is queued.",
    )
    attachments: list[AttachmentIn] = Field(
        default_factory=list,
        max_length=20,
        description="Files sent with the message. Executables are refused unless the account "
        "allows them.",
    )


class SentMessage(Response):
    id: str = Field(description="The message to this recipient: GET /api/v1/messages/{id}.")
    email: str
    kind: Literal["to", "cc", "bcc"]


class SendResult(Owned):
    message_id: str = Field(
        description="The first `to` recipient's message: GET /api/v1/messages/{message_id}."
    )
    status: Literal["queued"] = "queued"
    sandbox: bool
    messages: list[SentMessage] = Field(
        default_factory=list,
        description="One message per recipient (to, then cc, then bcc), each with its own "
        "status and events.",
    )
    suppressed: list[str] = Field(
        default_factory=list,
        description="Recipients on the suppression list: their messages are recorded "
        "email.suppressed instead of being sent.",
    )


class BatchSendRequest(Request):
    messages: list[SendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class BatchSendResult(Owned):
    data: list[SendResult] = Field(description="One result per message, in the request's order.")


class BulkSendRequest(Request):
    campaign_id: PublicId = Field(description="The campaign whose content is sent.")
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    batch_size: int | None = Field(
        default=None, ge=1, le=MAX_RECIPIENTS, description="Omitted: one batch."
    )
    delay_between_batches: float = Field(default=0, ge=0, le=7 * 86400)
    send_at: AwareDatetime | None = Field(default=None, description="When the first batch is due.")


class BulkSendResult(Owned):
    campaign_id: str
    queued: int
    batches: int
    first_batch_at: datetime
    last_batch_at: datetime
    message_ids: list[str]
    sandbox: bool


# ---------------------------------------------------------------------------------------------
# Messages


class MessageEvent(Response):
    id: str
    type: str
    data: dict[str, Any]
    created_at: datetime


class MessageTracking(Response):
    """What the message was queued to track, and what its copy carries."""

    opens: bool = Field(description="Opens were asked for.")
    clicks: bool = Field(description="Clicks were asked for (links in the html part).")
    plain_text: bool = Field(description="Sent as its text part alone: nothing is tracked.")
    open_pixel: bool = Field(
        description="The open pixel is in the html part: false when opens were not asked for, "
        "for a plain-text send, or when the message is too short to carry it."
    )
    open_pixel_left_out: str | None = Field(
        default=None, description="Why a pixel that was asked for is left out."
    )


class Message(Owned):
    id: str
    message_id: str = Field(description="The RFC 5322 Message-ID header, without brackets.")
    campaign_id: str | None
    from_email: str
    recipient: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_reply_code: int | None
    last_reply: str | None
    enhanced_status: str | None
    sandbox: bool
    to: list[SenderOut] = Field(description="The To list the message shows.")
    cc: list[SenderOut]
    reply_to: list[SenderOut]
    tags: list[str]
    metadata: dict[str, Any]
    held_reason: str | None = Field(
        description="Why it waits past its due time: its identity's cap, gap or pause, or a "
        "paused sending domain or account (next_attempt_at is when it may go)."
    )
    identity_id: str | None = Field(description="The sending identity it goes out through.")
    created_at: datetime
    sent_at: datetime | None
    tracking: MessageTracking
    events: list[MessageEvent]


MessageStatus = Literal[
    "queued",
    "sending",
    "sent",
    "deferred",
    "bounced",
    "failed",
    "suppressed",
    "cancelled",
    "paused",
    "held",
]


class MessageListQuery(ListQuery):
    recipient: Annotated[str, StringConstraints(min_length=1, max_length=254)] | None = Field(
        default=None, description="Exact address, compared case-insensitively."
    )
    status: MessageStatus | None = None
    campaign_id: PublicId | None = None
    tag: Tag | None = None
    since: AwareDatetime | None = Field(default=None, description="Created at or after.")
    until: AwareDatetime | None = Field(default=None, description="Created before.")


class MessageSummary(Owned):
    id: str
    campaign_id: str | None
    recipient: str
    subject: str
    status: str
    attempts: int
    tags: list[str]
    created_at: datetime
    sent_at: datetime | None
    last_reply_code: int | None


class MessageReschedule(Request):
    send_at: AwareDatetime = Field(
        description="When the message is due; an earlier time makes it due at once."
    )


# `email.opened`, `email.*` (every type under email.), or `*`-less exact names only.
EventTypeFilter = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?$"),
]


class EventListQuery(ListQuery):
    type: EventTypeFilter | None = Field(
        default=None, description="An event type (`email.opened`) or a prefix (`email.*`)."
    )
    message_id: PublicId | None = None
    campaign_id: PublicId | None = None
    since: AwareDatetime | None = Field(default=None, description="Created at or after.")
    until: AwareDatetime | None = Field(default=None, description="Created before.")


class LogEvent(Owned):
    id: str
    type: str
    created_at: datetime
    message_id: str | None
    campaign_id: str | None
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Contacts and suppressions


class ContactCreate(Request):
    email: Email
    first_name: Name | None = None
    last_name: Name | None = None
    company: Name | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=100)


class ContactUpdate(Request):
    email: Email | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    company: Name | None = None
    custom_fields: dict[str, Any] | None = None
    tags: list[Tag] | None = Field(default=None, max_length=100)


class Contact(Owned):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    custom_fields: dict[str, Any]
    tags: list[str]
    created_at: datetime
    updated_at: datetime


class ContactListQuery(ListQuery):
    tag: Tag | None = None


class SuppressionCreate(Request):
    email: Email
    reason: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "manual"
    detail: Annotated[str, StringConstraints(max_length=1000)] | None = None


class Suppression(Owned):
    email: str
    reason: str
    detail: str | None
    created_at: datetime


# ---------------------------------------------------------------------------------------------
# Keys, users, login


class ApiKeyCreate(Request):
    name: Name = ""
    type: Literal["secret", "publishable"] = Field(
        default="secret", description="publishable (pk_) keys may only read."
    )
    mode: Literal["live", "test"] | None = Field(
        default=None, description="Omitted: the calling key's mode. Test keys make test keys."
    )


class ApiKey(Owned):
    id: str
    prefix: str
    type: Literal["secret", "publishable", "oauth"] = Field(
        description="oauth: a user's consent to an OAuth client; revoking it ends its tokens."
    )
    mode: Literal["live", "test"]
    name: str
    created_at: datetime
    revoked_at: datetime | None
    client: str | None = Field(default=None, description="An OAuth grant's client_id.")
    scope: str | None = Field(default=None, description="An OAuth grant's scopes.")
    last_used_at: datetime | None = Field(
        default=None,
        description="When the key last authenticated a request, to the minute; null: never.",
    )


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. It is shown this once and cannot be recovered.")


class UserCreate(Request):
    email: Email
    password: Password


class User(Owned):
    id: str
    email: str
    created_at: datetime


Password = Annotated[str, StringConstraints(min_length=12, max_length=256)]


class LoginRequest(Request):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="Only needed when the address has users in several tenants."
    )
    livemode: bool | None = Field(
        default=None, description="Only needed when the address has a user in both modes."
    )
    expires_in: int | None = Field(
        default=None,
        ge=60,
        description="Seconds the token should live; the server caps it (at most an hour).",
    )


class PasswordChange(Request):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    new_password: Password


class LoggedOut(Response):
    logged_out: Literal[True] = True


class Token(Response):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


# ---------------------------------------------------------------------------------------------
# Webhooks


class WebhookCreate(Request):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    events: list[str] | None = Field(
        default=None, description="Event types, 'email.*' prefixes or '*'; omitted: all."
    )
    secret: str | None = Field(
        default=None, description="Omitted: a whsec_ secret is generated and shown once."
    )
    description: Annotated[str, StringConstraints(max_length=500)] = ""


class WebhookUpdate(Request):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    events: list[str] | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    active: bool | None = None


# The fields are Endpoint's, defined once in penguinmails.webhooks.endpoints; no docstring
# here, since a docstring would become the schema's description in the OpenAPI document.
class Webhook(Endpoint, Owned):
    pass


class WebhookCreated(Webhook):
    secret: str = Field(description="Signs every request; shown this once.")


class WebhookRotate(Request):
    secret: str | None = Field(
        default=None, description="Omitted: a whsec_ secret is generated and shown once."
    )
    overlap_seconds: int = Field(
        default=int(ROTATION_OVERLAP_SECONDS),
        ge=0,
        le=int(MAX_ROTATION_OVERLAP_SECONDS),
        description="How long the old secret keeps signing as a second signature; "
        "0 retires it at once.",
    )


class WebhookSecretRotated(Webhook):
    secret: str = Field(description="The new secret; shown this once.")
    previous_secret_expires_at: datetime = Field(
        description="Until then each request also carries a signature under the old secret."
    )


class WebhookTestResult(Owned):
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    webhook_id: str = Field(description="The webhook-id header the ping was sent with.")


DeliveryStatus = Literal["pending", "delivering", "delivered", "failed", "cancelled"]


class WebhookDeliveryQuery(ListQuery):
    status: DeliveryStatus | None = Field(default=None, description="Omitted: every status.")


class WebhookDelivery(Owned):
    id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


# ---------------------------------------------------------------------------------------------
# Analytics


class AnalyticsQuery(Query):
    period: Annotated[str, StringConstraints(pattern=r"^(all|[1-9][0-9]{0,3}[hd])$")] = Field(
        default="7d", description="24h, 7d, 30d ... (at most 9999 units), or all."
    )
    interval: Literal["hour", "day"] | None = Field(
        default=None, description="Omitted: hour for periods up to 48h, else day."
    )

    @model_validator(mode="after")
    def _bounded(self) -> AnalyticsQuery:
        if self.period != "all" and period_seconds(self.period) > 3 * 365 * 86400:
            raise PydanticCustomError("period", "at most three years")
        return self


def period_seconds(period: str) -> int:
    return int(period[:-1]) * (3600 if period.endswith("h") else 86400)


class Engagement(Response):
    total: int
    unique: int
    human: int
    unique_human: int


class EngagementDetail(Response):
    opened: Engagement
    clicked: Engagement


class Rates(Response):
    delivery_rate: float
    bounce_rate: float
    open_rate: float
    human_open_rate: float
    click_rate: float
    click_to_open_rate: float
    unsubscribe_rate: float
    complaint_rate: float
    reply_rate: float


class Overview(Response):
    sent: int = Field(description="Messages accepted and queued for delivery (email.sent).")
    delivered: int
    opened: int = Field(description="Messages opened (unique); engagement.opened has the rest.")
    clicked: int = Field(description="Messages clicked (unique).")
    bounced: int
    complained: int
    unsubscribed: int
    replied: int
    recipients: int
    deferred: int
    suppressed: int
    failed: int


class DeviceEngagement(Response):
    device_type: str
    opened: Engagement
    clicked: Engagement


class CountryEngagement(Response):
    country: str
    opened: Engagement
    clicked: Engagement


class LinkClicks(Response):
    url: str = Field(description="Where the tracked link led (the original URL).")
    clicked: Engagement = Field(
        description="Clicks of this link; unique: messages that clicked it; human: not a "
        "link scanner's."
    )


class SeriesPoint(Response):
    bucket: datetime
    sent: int
    delivered: int
    bounced: int
    opened: int
    unique_opened: int
    human_opened: int
    clicked: int
    unique_clicked: int
    human_clicked: int
    unsubscribed: int
    complained: int
    replied: int
    conversions: int


class CurrencyRevenue(Response):
    currency: str
    total_value: str
    conversion_value: str
    total_value_minor: int
    conversion_value_minor: int
    conversions: int


class RevenueImpact(Response):
    total_value: str = Field(description="Value of conversions through the campaign's clicks.")
    conversion_value: str = Field(description="Value of every conversion of its messages.")
    currency: str
    total_value_minor: int
    conversion_value_minor: int
    conversions: int
    by_currency: list[CurrencyRevenue]


class CampaignAnalytics(Owned):
    campaign_id: str
    period: str
    interval: Literal["hour", "day"]
    since: datetime | None
    overview: Overview
    rates: Rates
    engagement: EngagementDetail | None = Field(
        description="From the starter tier (basic analytics); null below it."
    )
    series: list[SeriesPoint] | None = Field(description="From the starter tier; null below it.")
    devices: list[DeviceEngagement] | None = Field(
        description="From the professional tier (advanced analytics); null below it."
    )
    countries: list[CountryEngagement] | None = Field(
        description="From the professional tier; null below it."
    )
    revenue_impact: RevenueImpact | None = Field(
        description="From the professional tier; null below it."
    )
    links: list[LinkClicks] | None = Field(
        default=None,
        description="The ten most clicked links in the period, from the starter tier; null "
        "below it.",
    )
    variants: list[VariantStats] = Field(
        default_factory=list,
        description="Per A/B variant, over the campaign's whole life (not the period).",
    )
    ab_winner: ABWinner | None = None
    ai_insights: AiInsights | None = Field(
        default=None,
        description="From the professional tier: findings from the campaign's numbers and the "
        "account's history (the subject that won, best send hours, domains that bounce), "
        "each with its evidence; an empty list while the numbers are too few.",
    )
    left_out: dict[str, Tier] = Field(
        default_factory=dict,
        description="The parts this account's plan tier leaves out (null above), each with the "
        "tier that includes it.",
    )


class TagAnalytics(Owned):
    """The messages carrying one tag, queued in the period, whatever their campaign."""

    tag: str
    period: str
    since: datetime | None
    overview: Overview
    rates: Rates
    engagement: EngagementDetail | None = Field(
        description="From the starter tier (basic analytics); null below it."
    )
    left_out: dict[str, Tier] = Field(
        default_factory=dict,
        description="The parts this account's plan tier leaves out, each with the tier that "
        "includes it.",
    )


# ---------------------------------------------------------------------------------------------
# Templates

TemplateId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]{1,64}$")
]
TemplateName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
TemplateSubject = Annotated[str, StringConstraints(min_length=1, max_length=998)]
TemplateDescription = Annotated[str, StringConstraints(max_length=1000)]


class TemplateCreate(Request):
    id: TemplateId | None = Field(
        default=None,
        description="Your own id, such as welcome_template: lowercase letters, digits, _ "
        "and -, unique in this mode. Omitted: a generated tpl_... id.",
    )
    name: TemplateName
    subject: TemplateSubject | None = Field(
        default=None, description="Used by a send or campaign that gives no subject of its own."
    )
    html: Body | None = Field(
        default=None,
        description="Its <style> rules are inlined into style attributes when it is sent "
        "(@media rules stay in a <style> block).",
    )
    text: Body | None = None
    description: TemplateDescription | None = None


class TemplateUpdate(Request):
    """Only the fields given change; a change to subject, html or text makes a new version."""

    name: TemplateName | None = None
    subject: TemplateSubject | None = None
    html: Body | None = None
    text: Body | None = None
    description: TemplateDescription | None = None


class Template(Owned):
    id: str
    name: str
    description: str | None
    subject: str | None
    html: str | None
    text: str | None
    version: int = Field(description="The current version: the one a send that names it uses.")
    created_at: datetime
    updated_at: datetime


class TemplateVersion(Owned):
    template_id: str
    version: int
    subject: str | None
    html: str | None
    text: str | None
    created_at: datetime


class TemplateRender(Request):
    personalization: Personalization = Field(default_factory=dict)
    email: Email | None = Field(
        default=None,
        description="The recipient address {{email}} stands for (it also picks the spintax "
        "options, as a message id does). Omitted: recipient@example.com.",
    )


class RenderedTemplate(Owned):
    template_id: str
    version: int
    subject: str | None
    html: str | None = Field(description="With its CSS inlined, as a message carries it.")
    text: str | None = Field(
        description="The text part; for an html-only template, the one derived from its html."
    )


# ---------------------------------------------------------------------------------------------
# Inbound


class InboundListQuery(ListQuery):
    message_id: PublicId | None = Field(
        default=None, description="Only the replies to this message (msg_...)."
    )


class InboundAttachment(Response):
    index: int = Field(description="Its place among the mail's attachments, from 0.")
    filename: str
    content_type: str = Field(description="As the sender declared it.")
    size: int = Field(description="Bytes, decoded.")
    sha256: str = Field(description="Of the decoded bytes, hex.")
    url: str = Field(
        description="Download link. It is the credential (no API key needed): share it as "
        "you would the file. Good until url_expires_at; read the mail again for a fresh one."
    )
    url_expires_at: datetime


class InboundAddress(Owned):
    address: str = Field(
        description="Mail sent here reaches you as email.received and in GET /inbound."
    )
    domain: str


class InboundEmailSummary(Owned):
    id: str
    message_id: str | None = Field(
        description="The message of ours it answers (msg_...); null for mail to your inbound "
        "address that answers none of them."
    )
    from_: str = Field(alias="from")
    subject: str
    auto: bool = Field(description="An automatic reply (out of office...), not a person's.")
    attachment_count: int
    received_at: datetime


class InboundEmail(InboundEmailSummary):
    to: list[str]
    cc: list[str]
    text: str | None = Field(description="The text/plain body; null when it has none.")
    html: str | None = Field(
        description="The text/html body as the sender wrote it: untrusted, sanitise before "
        "showing it."
    )
    headers: list[tuple[str, str]] = Field(description="[name, value] in order, decoded.")
    attachments: list[InboundAttachment]
    raw_url: str = Field(
        description="The mail as it arrived (message/rfc822), a link like an attachment's."
    )
    raw_url_expires_at: datetime


# ---------------------------------------------------------------------------------------------
# Health and the envelope (for the OpenAPI document)


class Health(Response):
    status: Literal["ok"]
    database: Literal["ok"]


class Meta(Response):
    request_id: str
    timestamp: datetime


class ErrorDetail(Response):
    field: str
    message: str


class ErrorBody(Response):
    code: str
    message: str
    details: list[ErrorDetail]
    request_id: str


class ErrorEnvelope(Response):
    success: Literal[False]
    error: ErrorBody


# ---------------------------------------------------------------------------------------------
# Sequences

MAX_STEPS = 20
MAX_ENROLL = 1000


class Delay(Request):
    """After the previous step was sent (step 1: after enrolment); days and hours add up."""

    days: int = Field(default=0, ge=0, le=365)
    business_days: bool = Field(
        default=False, description="Count days Monday to Friday only (in UTC)."
    )
    hours: float = Field(default=0, ge=0, le=24 * 365, description="May be fractional.")


class SequenceStepIn(Request):
    delay: Delay = Field(default_factory=Delay)
    subject: Subject | None = Field(
        default=None,
        description="Step 1: required unless content.template_id has one. A follow-up "
        'without one is sent as "Re: " and step 1\'s subject, threaded under step 1.',
    )
    content: ContentIn
    variants: Variants = Field(
        default_factory=list,
        description="A/B variants of this step; each message gets one by weight (or the "
        "winner, once the sequence's ab_test decided it).",
    )


class StopOn(Request):
    """What stops an enrolment; bounce, complaint and unsubscribe always do."""

    reply: bool = True
    auto_reply: bool = Field(
        default=False, description="An out-of-office or other automatic reply."
    )
    click: bool = False
    bounce: Literal[True] = True
    complaint: Literal[True] = True
    unsubscribe: Literal[True] = True


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError("timezone", "not a known IANA time zone") from None
    return value


def _weekdays() -> list[Weekday]:
    return ["mon", "tue", "wed", "thu", "fri"]


TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_time_zone)]


def _holidays(value: str) -> str:
    try:
        return windows.check(value)
    except windows.UnknownHolidays as exc:
        raise PydanticCustomError("holidays", "{why}", {"why": str(exc)}) from None


HolidayCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$"),
    AfterValidator(_holidays),
]


class SendingWindow(Request):
    """When steps may be sent, in the recipient's time zone: a contact's
    `custom_fields.timezone` (an IANA name), else this window's `timezone`."""

    days: list[Weekday] = Field(default_factory=_weekdays, min_length=1, max_length=7)
    start: time = Field(description="Opening time of day, e.g. 09:00.")
    end: time = Field(description="Closing time of day, after start, e.g. 17:00.")
    timezone: TimeZone = "UTC"
    skip_dates: list[date] = Field(
        default_factory=list,
        max_length=366,
        description="Local dates with no sending (holidays), in the recipient's zone.",
    )
    holidays: HolidayCode | None = Field(
        default=None,
        description="Skip this country's public holidays too: ISO 3166-1 alpha-2, optionally "
        'with a subdivision ("US", "US-CA", "DE-BY"), as the holidays library knows them.',
    )

    @model_validator(mode="after")
    def _ordered(self) -> SendingWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise PydanticCustomError("window", "times of day without an offset (use timezone)")
        if self.start >= self.end:
            raise PydanticCustomError("window", "start must be before end")
        return self


class SendingWindowOut(Response):
    days: list[str]
    start: time
    end: time
    timezone: str
    skip_dates: list[date]
    holidays: str | None = None
    holidays_until: date | None = Field(
        default=None,
        description="The holidays are computed up to this date, and again a year before it.",
    )


SequenceName = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_controls)
]


class SequenceCreate(Request):
    name: SequenceName = Field(description="Unique among your sequences; enrol by it too.")
    from_: From | None = Field(default=None, alias="from")
    steps: list[SequenceStepIn] = Field(min_length=1, max_length=MAX_STEPS)
    stop_on: StopOn = Field(default_factory=StopOn)
    settings: CampaignSettings = Field(default_factory=CampaignSettings)
    window: SendingWindow | None = Field(
        default=None,
        description="Omitted: steps go out whenever they are due. A step due outside the "
        "window goes out in the next one, spread across it.",
    )
    ab_test: ABTest | None = Field(
        default=None, description="For each step with variants: let a winner take the rest."
    )


class SequenceUpdate(Request):
    """Only the fields given change. New steps apply to each enrolment from its next step."""

    name: SequenceName | None = None
    from_: From | None = Field(default=None, alias="from")
    steps: list[SequenceStepIn] | None = Field(default=None, min_length=1, max_length=MAX_STEPS)
    stop_on: StopOn | None = None
    settings: CampaignSettings | None = None
    window: SendingWindow | None = Field(
        default=None, description="null: no window any more (steps go out when due)."
    )
    ab_test: ABTest | None = None


class DelayOut(Response):
    days: int
    business_days: bool
    hours: float


class SequenceStep(Response):
    step: int
    delay: DelayOut
    subject: str | None
    content: ContentOut
    variants: list[VariantOut] = Field(default_factory=list)
    ab_winner: ABWinner | None = None


class Sequence(Owned):
    id: str
    name: str
    from_: SenderOut = Field(alias="from")
    steps: list[SequenceStep]
    stop_on: dict[str, bool]
    settings: dict[str, Any]
    window: SendingWindowOut | None
    ab_test: dict[str, Any] | None = None
    status: Literal["active", "archived"]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


class EnrollmentCreate(Request):
    contacts: list[Annotated[str, StringConstraints(min_length=1, max_length=254)]] = Field(
        default_factory=list,
        max_length=MAX_ENROLL,
        description="Contact ids (contact_...) or email addresses; an address that is not "
        "a contact yet becomes one.",
    )
    tag: Tag | None = Field(
        default=None,
        description="Enrol every contact with this tag (those already enrolled are skipped).",
    )
    campaign_id: PublicId | None = Field(
        default=None,
        description="Enrol a campaign's recipients (those it was sent to, and a draft's list): "
        "each address becomes a contact if it is not one yet; those already enrolled are "
        "skipped.",
    )
    re_enroll: bool = Field(
        default=False,
        description="Enrol again a contact whose earlier enrolment has ended (never two "
        "running enrolments of one contact).",
    )

    @model_validator(mode="after")
    def _someone(self) -> EnrollmentCreate:
        if not self.contacts and self.tag is None and self.campaign_id is None:
            raise PydanticCustomError("enrollment", "give contacts, a tag or a campaign_id")
        return self


class ContactSequenceEnroll(Request):
    sequence: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The sequence's id (seq_...) or its name."
    )
    re_enroll: bool = False


EnrollmentStatus = Literal["active", "completed", "stopped"]


class Enrollment(Owned):
    id: str
    sequence_id: str
    contact_id: str
    email: str
    status: EnrollmentStatus
    stop_reason: str | None = Field(
        description="reply, auto_reply, bounce, complaint, unsubscribe, click, manual, "
        "archived, or how the last step's message ended (failed, suppressed, cancelled)."
    )
    step: int = Field(description="The last step queued (0: none yet).")
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class Enrolled(Response):
    items: list[Enrollment]
    skipped: int = Field(
        description="Tagged contacts or campaign recipients left out: already enrolled."
    )


class EnrollmentQuery(ListQuery):
    status: EnrollmentStatus | None = None


class SequenceStepStats(Response):
    step: int
    queued: int
    sent: int = Field(description="Accepted by the receiving server.")
    opened: int
    clicked: int
    replied: int
    bounced: int
    stopped: int = Field(description="Enrolments that stopped at this step.")
    variants: list[VariantStats] = Field(default_factory=list)
    ab_winner: ABWinner | None = None


class SequenceAnalytics(Response):
    sequence_id: str
    enrollments: dict[str, int]
    steps: list[SequenceStepStats]


# ---------------------------------------------------------------------------------------------
# Content intelligence (api.ai)


class OptimizeContentIn(Request):
    subject: Subject
    html: Body | None = None
    text: Body | None = None


class OptimizeRequest(Request):
    content: OptimizeContentIn
    audience: dict[str, Any] = Field(
        default_factory=dict,
        description="Accepted as the product documentation shows it; nothing here is "
        "derived from it (no model of audiences is claimed).",
    )
    optimization_goals: list[Literal["open_rate", "click_rate", "reply_rate", "revenue"]] = Field(
        default_factory=list, max_length=4
    )
    tracking: Tracking = Field(
        default_factory=Tracking,
        description="How it would be sent: the checks of the pixel and of tracked links "
        "depend on it.",
    )
    personalization: Personalization | None = Field(
        default=None,
        description="A sample recipient's values: variables it lacks or leaves empty are reported.",
    )
    rewrite: bool = Field(
        default=False,
        description="Also ask the operator's language model ([ai] rewrite_url) for a subject; "
        "its answer is used only when it passes the subject checks.",
    )


class OptimizedContent(Response):
    subject: str
    html: str | None
    text: str | None


class ContentFinding(Response):
    check: str
    severity: Literal["high", "medium", "low", "info"]
    part: Literal["subject", "html", "text"]
    message: str
    evidence: list[str]


class ContentChange(Response):
    part: Literal["subject", "html", "text"]
    before: str
    after: str
    made_by: Literal["rule", "model"]
    rule: str = Field(description="The rule's name, or the model's.")
    reason: str


class FeatureEvidence(Response):
    feature: str
    with_feature: dict[str, float | int] = Field(
        description="delivered, opened, clicked and their rates among the account's messages "
        "whose subject has the feature."
    )
    without_feature: dict[str, float | int]


class Estimate(Response):
    method: Literal["account_history", "prior"] = Field(
        description="account_history: a comparison fitted on this account's delivered "
        "messages; prior: too few of them, and the documented prior (no change) is answered."
    )
    sample_size: int = Field(description="Delivered messages the estimate rests on.")
    basis: str
    evidence: list[FeatureEvidence] = Field(default_factory=list)


class Sentiment(Response):
    compound: float
    positive: float
    neutral: float
    negative: float
    model: str


class Improvements(Response):
    expected_open_rate_increase: float = Field(
        description="The change in open rate (a difference of rates, 0.02 = two points) the "
        "changes made are expected to bring; see `estimate` for how it was obtained."
    )
    expected_click_rate_increase: float
    sentiment_score: float = Field(
        description="VADER's compound score of the optimized subject and text, -1 to 1."
    )
    sentiment: Sentiment
    estimate: Estimate


class SpamRule(Response):
    name: str
    score: float
    description: str


class SpamScore(Response):
    score: float
    rules: list[SpamRule]


class SpamAssassinResult(Response):
    available: bool
    reason: str | None = Field(default=None, description="Why it did not run.")
    original: SpamScore | None = None
    optimized: SpamScore | None = None


class Rewriting(Response):
    requested: bool
    used: bool
    model: str | None = None
    reason: str | None = None


class OptimizeResult(Response):
    original: OptimizedContent
    optimized: OptimizedContent
    improvements: Improvements
    changes: list[ContentChange]
    findings: list[ContentFinding]
    spamassassin: SpamAssassinResult
    rewriting: Rewriting


class CampaignAiOptimization(Response):
    enabled: bool
    improvement_score: float | None = Field(
        description="The expected open-rate change of the suggested changes (as "
        "improvements.expected_open_rate_increase); null below the professional tier."
    )
    suggestions: list[str]
    changes_applied: bool = Field(
        default=False, description="Always false: the analysis never changes the content."
    )
    estimate: Estimate | None = None
    left_out: Tier | None = Field(
        default=None, description="The tier that includes the analysis, when this one does not."
    )


class ContactAnalysisRequest(Request):
    email: Annotated[str, StringConstraints(min_length=3, max_length=254)] | None = None
    company: Annotated[str, StringConstraints(max_length=200)] | None = None
    lifecycle_stage: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, alias="lifecycleStage"
    )


class ContactEngagement(Response):
    messages: int
    delivered: int
    opened: int
    clicked: int
    replied: int
    bounced: int
    last_sent_at: datetime | None


class ContactAnalysis(Response):
    email: str | None
    syntax_valid: bool | None
    role_address: bool | None = Field(
        description="A mailbox of a function (info@, sales@), not of a person."
    )
    free_mail: bool | None = Field(description="A free webmail domain, not a company's.")
    domain: str | None
    mx_hosts: list[str]
    mx_provider: str | None = Field(description="Who hosts the domain's mail, from its MX.")
    accepts_mail: bool | None = Field(
        description="The domain has MX records (or an address, the implicit MX); null when "
        "DNS did not answer."
    )
    dns_error: str | None = None
    engagement: ContactEngagement | None = Field(
        description="This account's past messages to the address."
    )
    company: str | None
    lifecycle_stage: str | None
    enrichment: Literal["local"] = Field(
        default="local",
        description="Everything here is derived locally; no outside enrichment service is asked.",
    )


class AiInsight(Response):
    type: Literal["subject_line", "send_time", "recipient_domain"]
    finding: str
    evidence: dict[str, Any]


class AiInsights(Response):
    recommendations: list[AiInsight]


# Campaign (above) names the sending window models defined with the sequences, and the
# content analysis models defined last.
Campaign.model_rebuild()
CampaignAnalytics.model_rebuild()
