"""Campaign rows as drafts: what the campaign routes and send-bulk both need, so neither
route module imports the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from api.errors import not_found
from penguinmails.messages import Draft
from penguinmails.queries import load

SQL = load("api")

PLACEHOLDER_SENDER = "sender@example.com"  # checks content before a sender is chosen


def new_draft(
    *,
    from_email: str | None,
    from_name: str,
    subject: str,
    html: str | None,
    text: str | None,
    headers: dict[str, str],
    settings: dict[str, Any],
    tags: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
) -> Draft:
    return Draft(
        from_email=from_email or PLACEHOLDER_SENDER,
        from_name=from_name,
        subject=subject,
        recipients=[],
        text=text,
        html=html,
        headers=headers,
        settings=settings,
        tags=tags,
        metadata=metadata or {},
    )


def draft_from_row(row: asyncpg.Record, from_email: str, from_name: str) -> Draft:
    return new_draft(
        from_email=from_email,
        from_name=from_name,
        subject=row["subject"],
        html=row["html_body"],
        text=row["text_body"],
        headers=row["headers"],
        settings=row["settings"],
        tags=row["tags"],
        metadata=row["metadata"],
    )


async def lock_campaign(
    conn: asyncpg.Connection, tenant_id: int, campaign_id: str
) -> asyncpg.Record:
    """The campaign row, locked for this transaction (state changes lock it first), or 404."""
    row = await conn.fetchrow(SQL["lock_campaign"], tenant_id, campaign_id)
    if row is None:
        raise not_found("Campaign")
    return row


async def campaign_event(
    conn: asyncpg.Connection, tenant_id: int, campaign_pk: int, kind: str, data: dict[str, Any]
) -> None:
    """`campaign.created` / `campaign.sent`, in the transaction that made the change: a
    webhook never announces what was rolled back, and nothing done goes unannounced."""
    await conn.execute(SQL["insert_campaign_event"], tenant_id, campaign_pk, kind, data)
