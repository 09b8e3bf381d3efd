"""Campaigns: drafts that are edited, then sent now or at send_at, paused, resumed, cancelled.

Life cycle: draft -> sending (shown as `scheduled` while send_at is ahead) <-> paused ->
completed | cancelled. `send` queues one message per recipient in one INSERT, in the same
transaction that marks the campaign sending; from then on the queue holds the recipients.
Pausing moves the campaign's waiting messages to the `paused` status, which the MTA never
claims; resuming puts them back with their due times shifted by the pause (so batch spacing
and retry back-off are kept). Cancelling cancels every waiting message; a message already in
an SMTP conversation finishes it. `completed` (and its `campaign.completed` event) is set by a
database trigger when the last message becomes final (migration 0006).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import asyncpg

from api import identities
from api.ai import campaign_summary
from api.content_checks import Content
from api.drafts import campaign_event, draft_from_row, lock_campaign, new_draft
from api.errors import conflict, not_found, validation_error
from api.identities import pool_ids
from api.models import (
    Campaign,
    CampaignCreate,
    CampaignSend,
    CampaignSettings,
    CampaignUpdate,
    ContentOut,
    ListQuery,
    Page,
    Recipient,
    Sender,
    SenderOut,
)
from api.routing import API, Call, decode_cursor, keyset_page
from api.senders import check_draft, resolve_sender
from api.templates import content_of
from api.variants import (
    ab_test_dict,
    check_variants,
    enqueue_variants,
    needs_variants,
    resolve_variants,
    variant_models,
)
from api.windows import into_window, set_campaign_window, window_columns, window_model
from penguinmails.queries import load

SQL = load("api")
SQL_VARIANTS = load("api", "variants.sql")


def settings_dict(settings: CampaignSettings, pools: Container[str] = ()) -> dict[str, Any]:
    """What the MTA reads: tracking is written out explicitly, off when analytics is off;
    an egress pool only when one is asked for, and only one the MTA has (`pools`)."""
    on = settings.analytics_enabled
    written: dict[str, Any] = {
        "analytics_enabled": on,
        "ai_optimization": settings.ai_optimization,
        "track_opens": on and settings.track_opens,
        "track_clicks": on and settings.track_clicks,
    }
    if settings.plain_text:
        written["plain_text"] = True
    if settings.egress_pool is not None:
        if settings.egress_pool not in pools:
            raise validation_error(
                [
                    {
                        "field": "settings.egress_pool",
                        "message": "is not one of this server's egress pools",
                    }
                ]
            )
        written["egress_pool"] = settings.egress_pool
    if settings.identities:
        written["identities"] = list(dict.fromkeys(settings.identities))
    return written


def campaign_model(row: asyncpg.Record) -> Campaign:
    sender = (
        SenderOut(email=row["from_email"], name=row["from_name"]) if row["from_email"] else None
    )
    fields = {name: row[name] for name in _CAMPAIGN_COLUMNS}
    fields["paused_reason"] = row.get("paused_reason")
    fields["variants"] = variant_models(row.get("variants") or [])
    fields["ab_test"] = row.get("ab_test")
    fields["ab_winner"] = row.get("ab_winner")
    fields["window"] = window_model(row) if row.get("window_days") is not None else None
    return Campaign.model_validate(
        {
            **fields,
            "id": row["public_id"],
            "from": sender,
            "content": ContentOut(
                html=row["html_body"],
                text=row["text_body"],
                template_id=row["template_id"],
                template_version=row["template_version"],
            ),
        }
    )


_CAMPAIGN_COLUMNS = (
    "name",
    "subject",
    "settings",
    "headers",
    "tags",
    "metadata",
    "recipient_count",
    "status",
    "sandbox",
    "send_at",
    "started_at",
    "paused_at",
    "completed_at",
    "cancelled_at",
    "created_at",
    "updated_at",
)


async def fetch_campaign(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, campaign_id: str
) -> Campaign:
    row = await conn.fetchrow(SQL["get_campaign"], tenant_id, campaign_id)
    if row is None:
        raise not_found("Campaign")
    return campaign_model(row)


@API.route(
    "POST",
    "/campaigns",
    summary="Create a campaign (status draft)",
    tag="Campaigns",
    body=CampaignCreate,
    response=Campaign,
    status=201,
)
async def create_campaign(call: Call[CampaignCreate, None]) -> Campaign:
    body = call.body
    content = await content_of(call.pool, call.principal.tenant_id, body.content, body.subject)
    from_email, from_name = None, ""
    if body.from_ is not None:
        from_email, from_name = await resolve_sender(call.pool, call.principal, body.from_)
    settings = settings_dict(body.settings, call.state.settings.mta.pools)
    await pool_ids(call.pool, call.principal.tenant_id, body.settings.identities)
    draft = new_draft(
        from_email=from_email,
        from_name=from_name,
        subject=content.subject or "",
        html=content.html,
        text=content.text,
        headers=body.headers,
        settings=settings,
    )
    check_draft(draft, body.recipients)
    base = {"subject": content.subject, "html": content.html, "text": content.text}
    variants = await resolve_variants(call.pool, call.principal.tenant_id, body.variants, base)
    check_variants(draft, variants, body.recipients)
    ab_test = ab_test_dict(body.ab_test, variants)
    async with call.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            SQL["insert_campaign"],
            call.principal.tenant_id,
            body.name,
            content.subject,
            from_email,
            from_name,
            content.html,
            content.text,
            body.headers,
            settings,
            [r.model_dump() for r in body.recipients],
            len(body.recipients),
            call.principal.sandbox,
            body.send_at,
            content.template_id,
            content.template_version,
            body.tags,
            body.metadata,
        )
        await conn.execute(SQL_VARIANTS["set_campaign_ab"], row["id"], variants, ab_test)
        await set_campaign_window(conn, row["id"], window_columns(body.window))
        campaign = await fetch_campaign(conn, call.principal.tenant_id, row["public_id"])
        if settings["ai_optimization"]:
            # Suggestions only: the stored content is what was given.
            campaign.ai_optimization = await campaign_summary(
                conn,
                call.principal.tenant_id,
                call.principal.tier,
                Content(content.subject or "", content.html, content.text),
                settings,
                call.state.settings.ai,
            )
        await campaign_event(
            conn,
            call.principal.tenant_id,
            row["id"],
            "campaign.created",
            {
                "name": campaign.name,
                "status": campaign.status,
                "recipient_count": campaign.recipient_count,
            },
        )
        return campaign


@API.route(
    "GET",
    "/campaigns/{id}",
    summary="Get a campaign",
    tag="Campaigns",
    response=Campaign,
    errors=(404,),
    publishable=True,
)
async def get_campaign(call: Call[None, None]) -> Campaign:
    return await fetch_campaign(
        call.pool, call.principal.tenant_id, call.path_id("campaign", "Campaign")
    )


@API.route(
    "GET",
    "/campaigns",
    summary="List campaigns, newest first",
    tag="Campaigns",
    query=ListQuery,
    response=Page[Campaign],
    publishable=True,
)
async def list_campaigns(call: Call[None, ListQuery]) -> Page[Campaign]:
    query = call.query
    after = decode_cursor(query.cursor, numeric=False)
    rows = await call.pool.fetch(
        SQL["list_campaigns"], call.principal.tenant_id, after, query.limit + 1
    )
    return keyset_page(Page[Campaign], rows, query.limit, campaign_model)


@API.route(
    "PATCH",
    "/campaigns/{id}",
    summary="Change a draft campaign",
    tag="Campaigns",
    body=CampaignUpdate,
    response=Campaign,
    errors=(404, 409),
)
async def update_campaign(call: Call[CampaignUpdate, None]) -> Campaign:
    body = call.body
    campaign_id = call.path_id("campaign", "Campaign")
    given = body.model_fields_set
    for name in (
        "name",
        "subject",
        "content",
        "recipients",
        "settings",
        "headers",
        "tags",
        "metadata",
        "variants",
    ):
        if name in given and getattr(body, name) is None:
            raise validation_error([{"field": name, "message": "must not be null"}])
    async with call.pool.acquire() as conn, conn.transaction():
        row = await lock_campaign(conn, call.principal.tenant_id, campaign_id)
        if row["status"] != "draft":
            raise conflict(f"Only a draft can be changed; this campaign is {row['status']}")
        from_email, from_name = row["from_email"], row["from_name"]
        if "from_" in given:
            from_email, from_name = (
                await resolve_sender(conn, call.principal, body.from_)
                if body.from_ is not None
                else (None, "")
            )
        html, text = row["html_body"], row["text_body"]
        template = (row["template_id"], row["template_version"])
        subject = body.subject if body.subject is not None else row["subject"]
        if body.content is not None:
            content = await content_of(conn, call.principal.tenant_id, body.content, subject)
            html, text = content.html, content.text
            subject = content.subject or subject
            template = (content.template_id, content.template_version)
        settings = (
            settings_dict(body.settings, call.state.settings.mta.pools)
            if body.settings is not None
            else row["settings"]
        )
        if body.settings is not None:
            await pool_ids(conn, call.principal.tenant_id, body.settings.identities)
        headers = body.headers if body.headers is not None else row["headers"]
        recipients = (
            [r.model_dump() for r in body.recipients]
            if body.recipients is not None
            else row["recipients"]
        )
        draft = new_draft(
            from_email=from_email,
            from_name=from_name,
            subject=subject,
            html=html,
            text=text,
            headers=headers,
            settings=settings,
        )
        checked = [Recipient.model_validate(r) for r in recipients]
        check_draft(draft, checked)
        variants = row["variants"]
        if body.variants is not None:
            base = {"subject": subject, "html": html, "text": text}
            variants = await resolve_variants(conn, call.principal.tenant_id, body.variants, base)
        check_variants(draft, variants, checked)
        ab_test = (
            ab_test_dict(body.ab_test, variants)
            if "ab_test" in given
            else needs_variants(row["ab_test"], variants)
        )
        await conn.execute(SQL_VARIANTS["set_campaign_ab"], row["id"], variants, ab_test)
        if "window" in given:
            await set_campaign_window(conn, row["id"], window_columns(body.window))
        await conn.execute(
            SQL["update_draft"],
            call.principal.tenant_id,
            row["id"],
            body.name if body.name is not None else row["name"],
            subject,
            from_email,
            from_name,
            html,
            text,
            headers,
            settings,
            recipients,
            len(recipients),
            body.send_at if "send_at" in given else row["send_at"],
            *template,
            body.tags if body.tags is not None else row["tags"],
            body.metadata if body.metadata is not None else row["metadata"],
        )
        return await fetch_campaign(conn, call.principal.tenant_id, campaign_id)


@API.route(
    "POST",
    "/campaigns/{id}/send",
    summary="Send a draft now or at send_at",
    tag="Campaigns",
    tier="starter",
    body=CampaignSend,
    body_optional=True,
    response=Campaign,
    status=202,
    errors=(404, 409),
)
async def send_campaign(call: Call[CampaignSend, None]) -> Campaign:
    body = call.body
    campaign_id = call.path_id("campaign", "Campaign")
    async with call.pool.acquire() as conn, conn.transaction():
        row = await lock_campaign(conn, call.principal.tenant_id, campaign_id)
        if row["status"] != "draft":
            raise conflict(f"Only a draft can be sent; this campaign is {row['status']}")
        recipients = [Recipient.model_validate(r) for r in row["recipients"]]
        if not recipients:
            raise validation_error(
                [
                    {
                        "field": "recipients",
                        "message": "the campaign has no recipients "
                        "(add them with PATCH, or use /emails/send-bulk)",
                    }
                ]
            )
        stored = (
            Sender.model_construct(email=row["from_email"], name=row["from_name"])
            if row["from_email"]
            else None
        )
        from_email, from_name = await resolve_sender(
            conn, call.principal, stored, settings=call.state.settings
        )
        send_at = body.send_at or row["send_at"]  # None: now, in the database's clock
        draft = draft_from_row(row, from_email, from_name)
        check_draft(draft, recipients)
        draft.recipients = [r.email for r in recipients]
        draft.personalization = [r.personalization for r in recipients]
        draft.campaign_id = row["id"]
        draft.send_at = send_at
        draft.sandbox = row["sandbox"] or call.principal.sandbox
        winner = row["ab_winner"]["variant"] if row["ab_winner"] else None
        queued = await enqueue_variants(
            conn, call.principal.tenant_id, draft, row["variants"], row["ab_test"], winner
        )
        ids = [q.id for q in queued]
        await identities.assign(
            conn, call.principal.tenant_id, row["settings"].get("identities", []), ids
        )
        await into_window(conn, row["id"], ids)
        await conn.execute(
            SQL["start_campaign"], row["id"], call.principal.tenant_id, send_at, len(ids)
        )
        campaign = await fetch_campaign(conn, call.principal.tenant_id, campaign_id)
        await campaign_event(
            conn,
            call.principal.tenant_id,
            row["id"],
            "campaign.sent",
            {
                "name": campaign.name,
                "status": campaign.status,
                "queued": len(ids),
                "recipient_count": campaign.recipient_count,
                "send_at": campaign.send_at.isoformat() if campaign.send_at else None,
            },
        )
        return campaign


@API.route(
    "POST",
    "/campaigns/{id}/pause",
    summary="Pause a sending campaign: its waiting messages stay queued but unclaimed",
    tag="Campaigns",
    response=Campaign,
    errors=(404, 409),
)
async def pause_campaign(call: Call[None, None]) -> Campaign:
    campaign_id = call.path_id("campaign", "Campaign")
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await lock_campaign(conn, call.principal.tenant_id, campaign_id)
        if row["status"] != "sending":
            raise conflict(f"Only a sending campaign can be paused; this one is {row['status']}")
        await conn.execute(SQL["pause_campaign_messages"], row["id"], tenant)
        await conn.execute(SQL["set_campaign_paused"], row["id"])
        return await fetch_campaign(conn, tenant, campaign_id)


@API.route(
    "POST",
    "/campaigns/{id}/resume",
    summary="Resume a paused campaign",
    tag="Campaigns",
    response=Campaign,
    errors=(404, 409),
)
async def resume_campaign(call: Call[None, None]) -> Campaign:
    campaign_id = call.path_id("campaign", "Campaign")
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await lock_campaign(conn, call.principal.tenant_id, campaign_id)
        if row["status"] != "paused":
            raise conflict(f"Only a paused campaign can be resumed; this one is {row['status']}")
        await conn.execute(SQL["resume_campaign_messages"], row["id"], tenant, row["paused_at"])
        await conn.execute(SQL["set_campaign_resumed"], row["id"], row["paused_at"])
        return await fetch_campaign(conn, tenant, campaign_id)


@API.route(
    "POST",
    "/campaigns/{id}/cancel",
    summary="Cancel a campaign and every message still waiting",
    tag="Campaigns",
    response=Campaign,
    errors=(404, 409),
)
async def cancel_campaign(call: Call[None, None]) -> Campaign:
    campaign_id = call.path_id("campaign", "Campaign")
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        row = await lock_campaign(conn, call.principal.tenant_id, campaign_id)
        if row["status"] not in ("draft", "sending", "paused"):
            raise conflict(f"This campaign is already {row['status']}")
        await conn.execute(SQL["set_campaign_cancelled"], row["id"])
        await conn.execute(SQL["cancel_campaign_messages"], row["id"], tenant)
        return await fetch_campaign(conn, tenant, campaign_id)
