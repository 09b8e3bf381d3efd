"""What an event's stored data may show outside the database.

Older rows, and writers that keep one, hold integer row keys in an event's data (`campaign_id`,
`inbound_id` ...). Integer keys never leave the database: the API's event views and the webhook
payloads show the objects by public id instead, and leave these out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROW_KEYS = ("campaign_id", "webhook_id", "inbound_id", "queue_id")


def public_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data` without integer row keys (a public id under the same name stays)."""
    return {k: v for k, v in (data or {}).items() if not (k in ROW_KEYS and type(v) is int)}
