"""A webhook's body, built from an event row: the tracker's dispatcher sends it, and the API's
polling triggers (api.zapier) list the same bodies, so a Zap set up on either sees one shape.

The row has the event (`event_public_id`, `event_type`, `event_data`, `event_created_at`,
`has_message`, `has_campaign`) and the few fields of its message and campaign that the body
shows (`message_public_id`, `rfc_message_id`, `recipient`, `message_tags`,
`message_metadata`, `campaign_public_id`, `campaign_name`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from penguinmails.events import public_data


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Event data that repeats what the payload's `email` object says, by its key there: left out
# when equal (the MTA's copy); kept when it says something else (a reply's own Message-ID).
_EMAIL_KEYS = (("recipient", "to"), ("message_id", "message_id"))
# Event data of opens and clicks that goes under `analytics`, by payload name.
_ANALYTICS_KEYS = (
    ("open_count", "open_count"),
    ("click_count", "click_count"),
    ("device_type", "device_type"),
    ("location", "country"),
    ("country_code", "country_code"),
)
# A campaign event's status when its data does not carry one: the status it marks.
_CAMPAIGN_STATUS = {
    "campaign.created": "draft",
    "campaign.sent": "sending",
    "campaign.completed": "completed",
}


def payload(row: Mapping[str, Any]) -> bytes:
    """The request body, `{"id", "type", "created", "data"}`, the same bytes on every retry.

    `data` by what the event is about (docs/webhooks.md shows each type):
    - a message: `email` = {id, campaign_id, to, message_id, <verb>_at, tags, metadata}
      (`opened_at` for email.opened; tags and metadata as the send gave them), then for
      opens and clicks `analytics` = {open_count, click_count, device_type, location,
      country_code}, then the event's own details (url, smtp_code...);
    - a campaign alone: `campaign` = {id}, for campaign.* with name, status and the event's
      details inside it; for other types (analytics.updated) the details beside it;
    - neither (webhook.disabled): the event's details.
    Ids are public ids (`evt_`, `msg_`, `campaign_`, `wh_`); no integer key appears.
    """
    kind: str = row["event_type"]
    created = _iso(row["event_created_at"])
    details = public_data(row["event_data"])
    data: dict[str, Any]
    if row["has_message"]:
        email: dict[str, Any] = {
            "id": row["message_public_id"],
            "campaign_id": row["campaign_public_id"],
            "to": row["recipient"],
            "message_id": row["rfc_message_id"],
        }
        if kind.startswith("email."):
            email[kind.removeprefix("email.") + "_at"] = created
        # The sender's own labels, on every event of the message, so a receiver can route
        # it without a lookup of its own.
        email["tags"] = list(row["message_tags"] or [])
        email["metadata"] = dict(row["message_metadata"] or {})
        for key, same in _EMAIL_KEYS:
            if key in details and details[key] == email[same]:
                del details[key]
        data = {"email": email}
        if kind in ("email.opened", "email.clicked"):
            data["analytics"] = {name: details.pop(key, None) for name, key in _ANALYTICS_KEYS}
        details.pop("campaign_id", None)  # said by email.campaign_id
        data.update((key, value) for key, value in details.items() if key not in data)
    elif row["has_campaign"]:
        campaign: dict[str, Any] = {"id": row["campaign_public_id"]}
        details.pop("campaign_id", None)  # said by campaign.id
        if kind.startswith("campaign."):
            campaign["name"] = row["campaign_name"]
            campaign["status"] = _CAMPAIGN_STATUS.get(kind)
            campaign.update(details)  # the event's own name and status, when it has them
            data = {"campaign": campaign}
        else:
            data = {"campaign": campaign}
            data.update((key, value) for key, value in details.items() if key not in data)
    else:
        data = details
    return orjson.dumps(
        {"id": row["event_public_id"], "type": kind, "created": created, "data": data}
    )
