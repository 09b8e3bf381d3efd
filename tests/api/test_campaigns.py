"""Campaigns: drafts, edits, sending now or later, pause/resume/cancel, completion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tests.helpers import Client, assert_error, campaign_body, create_campaign, row_pk


async def test_create_get_and_list(client: Client) -> None:
    made = await create_campaign(client)
    assert made["status"] == "draft"
    assert made["recipient_count"] == 2
    assert made["from"] == {"email": "news@acme.test", "name": "Acme"}
    assert made["settings"] == {
        "analytics_enabled": True,
        "ai_optimization": False,
        "track_opens": True,
        "track_clicks": False,
    }
    assert made["sandbox"] is True  # created with a test key
    assert (await client.get(f"/campaigns/{made['id']}")).data == made

    for i in range(4):
        await create_campaign(client, name=f"c{i}")
    first = (await client.get("/campaigns", params={"limit": "2"})).data
    assert [c["name"] for c in first["items"]] == ["c3", "c2"] and first["has_more"]
    second = (
        await client.get("/campaigns", params={"limit": "2", "cursor": first["next_cursor"]})
    ).data
    third = (
        await client.get("/campaigns", params={"limit": "2", "cursor": second["next_cursor"]})
    ).data
    assert [c["name"] for c in second["items"]] == ["c1", "c0"]
    assert [c["id"] for c in third["items"]] == [made["id"]] and not third["has_more"]
    assert third["next_cursor"] is None


async def test_analytics_disabled_switches_tracking_off(client: Client) -> None:
    made = await create_campaign(client, settings={"analytics_enabled": False})
    assert made["settings"] == {
        "analytics_enabled": False,
        "ai_optimization": False,
        "track_opens": False,
        "track_clicks": False,
    }


async def test_create_validation(client: Client) -> None:
    reply = await client.post("/campaigns", json={"subject": "x", "content": {}})
    fields = {d["field"] for d in assert_error(reply, 422, "VALIDATION_ERROR")["details"]}
    assert "name" in fields

    reply = await client.post("/campaigns", json=campaign_body(content={"subject": "x"}))
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "content.subject"

    reply = await client.post("/campaigns", json=campaign_body(content={}))
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "content"

    reply = await client.post(
        "/campaigns", json=campaign_body(content={"html": "x", "template_id": "t1"})
    )
    assert (
        assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "content.template_id"
    )

    bad = campaign_body(
        recipients=[
            {"email": "ok@dest.test", "personalization": {"first_name": "A"}},
            {"email": "broken", "personalization": {"first_name": "B"}},
            {"email": "c@dest.test"},  # no first_name: the body needs it
        ]
    )
    error = assert_error(await client.post("/campaigns", json=bad), 422, "VALIDATION_ERROR")
    fields = [d["field"] for d in error["details"]]
    assert fields == ["recipients[1].email", "recipients[2].personalization"]
    assert error["details"][0]["message"] == "Invalid email format"
    assert "first_name" in error["details"][1]["message"]

    error = assert_error(
        await client.post("/campaigns", json=campaign_body(subject="Hi\r\nBcc: x@y.test")),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "subject"

    error = assert_error(
        await client.post("/campaigns", json=campaign_body(headers={"X-Bad": "a\nb"})),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "headers"


async def test_patch_only_while_draft(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client)
    path = f"/campaigns/{made['id']}"
    changed = (
        await client.patch(
            path,
            json={
                "name": "Renamed",
                "recipients": [{"email": "cy@dest.test", "personalization": {"first_name": "Cy"}}],
            },
        )
    ).data
    assert changed["name"] == "Renamed" and changed["recipient_count"] == 1
    assert changed["subject"] == made["subject"]
    assert_error(await client.patch(path, json={"name": None}), 422, "VALIDATION_ERROR")
    assert_error(await client.patch("/campaigns/424242", json={"name": "x"}), 404, "NOT_FOUND")

    sent = await client.post(f"{path}/send")
    assert sent.status == 202 and sent.data["status"] == "sending"
    error = assert_error(await client.patch(path, json={"name": "late"}), 409, "CONFLICT")
    assert "sending" in error["message"]
    assert_error(await client.post(f"{path}/send"), 409, "CONFLICT")


async def test_send_queues_one_message_per_recipient(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client)
    reply = await client.post(f"/campaigns/{made['id']}/send")
    assert reply.status == 202
    rows = await pool.fetch(
        "SELECT * FROM messages WHERE campaign_id = $1 ORDER BY recipient",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert [r["recipient"] for r in rows] == ["ann@dest.test", "bob@dest.test"]
    assert all(r["status"] == "queued" and r["sandbox"] for r in rows)
    assert rows[0]["personalization"] == {"first_name": "Ann"}
    assert rows[0]["settings"]["track_opens"] is True
    assert rows[0]["from_email"] == "news@acme.test" and rows[0]["from_name"] == "Acme"
    assert reply.data["recipient_count"] == 2


async def test_send_later_is_scheduled(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client)
    when = datetime.now(UTC) + timedelta(hours=2)
    reply = await client.post(f"/campaigns/{made['id']}/send", json={"send_at": when.isoformat()})
    assert reply.data["status"] == "scheduled"
    due = await pool.fetchval(
        "SELECT min(next_attempt_at) FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert abs((due - when).total_seconds()) < 1
    assert_error(await client.post(f"/campaigns/{made['id']}/send"), 409, "CONFLICT")
    assert_error(
        await client.post(f"/campaigns/{made['id']}/send", json={"send_at": "tomorrow"}),
        422,
        "VALIDATION_ERROR",
    )
    other = await create_campaign(client)
    reply = await client.post(
        f"/campaigns/{other['id']}/send", json={"send_at": "2030-01-01T00:00:00"}
    )
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "send_at"


async def test_empty_campaign_cannot_be_sent(client: Client) -> None:
    made = await create_campaign(client, recipients=[])
    error = assert_error(
        await client.post(f"/campaigns/{made['id']}/send"), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "recipients"


async def test_pause_resume_cancel(client: Client, pool: asyncpg.Pool) -> None:
    made = await create_campaign(client)
    path = f"/campaigns/{made['id']}"
    assert_error(await client.post(f"{path}/pause"), 409, "CONFLICT")
    await client.post(
        f"{path}/send", json={"send_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}
    )
    before = await pool.fetch(
        "SELECT id, next_attempt_at FROM messages WHERE campaign_id = $1 ORDER BY id",
        await row_pk(pool, "campaigns", made["id"]),
    )

    paused = (await client.post(f"{path}/pause")).data
    assert paused["status"] == "paused" and paused["paused_at"]
    statuses = await pool.fetch(
        "SELECT status FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert {r["status"] for r in statuses} == {"paused"}
    assert_error(await client.post(f"{path}/pause"), 409, "CONFLICT")

    resumed = (await client.post(f"{path}/resume")).data
    assert resumed["status"] in ("scheduled", "sending") and resumed["paused_at"] is None
    after = await pool.fetch(
        "SELECT id, status, next_attempt_at FROM messages WHERE campaign_id = $1 ORDER BY id",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert {r["status"] for r in after} == {"queued"}
    for old, new in zip(before, after, strict=True):
        assert new["next_attempt_at"] >= old["next_attempt_at"]  # shifted by the pause
    assert_error(await client.post(f"{path}/resume"), 409, "CONFLICT")

    cancelled = (await client.post(f"{path}/cancel")).data
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    statuses = await pool.fetch(
        "SELECT status FROM messages WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert {r["status"] for r in statuses} == {"cancelled"}
    assert_error(await client.post(f"{path}/cancel"), 409, "CONFLICT")
    # Cancelling is not completing.
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'campaign.completed'") == 0


async def test_cancel_a_draft(client: Client) -> None:
    made = await create_campaign(client)
    assert (await client.post(f"/campaigns/{made['id']}/cancel")).data["status"] == "cancelled"
    assert_error(await client.post(f"/campaigns/{made['id']}/send"), 409, "CONFLICT")


async def test_completed_once_when_every_message_is_final(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await create_campaign(client)
    await client.post(f"/campaigns/{made['id']}/send")
    ids = [
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM messages WHERE campaign_id = $1 ORDER BY id",
            await row_pk(pool, "campaigns", made["id"]),
        )
    ]
    await pool.execute("UPDATE messages SET status = 'sent', sent_at = now() WHERE id = $1", ids[0])
    assert (await client.get(f"/campaigns/{made['id']}")).data["status"] == "sending"
    await pool.execute("UPDATE messages SET status = 'bounced' WHERE id = $1", ids[1])
    done = (await client.get(f"/campaigns/{made['id']}")).data
    assert done["status"] == "completed" and done["completed_at"]
    await pool.execute("UPDATE messages SET status = 'bounced' WHERE id = ANY($1)", ids)
    events = await pool.fetch("SELECT * FROM events WHERE type = 'campaign.completed'")
    assert len(events) == 1 and events[0]["campaign_id"] == await row_pk(
        pool, "campaigns", made["id"]
    )
    assert events[0]["data"] == {
        "name": made["name"],
        "status": "completed",
        "recipient_count": 2,
    }


async def test_resume_completes_a_campaign_that_finished_while_paused(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await create_campaign(client)
    path = f"/campaigns/{made['id']}"
    await client.post(f"{path}/send")
    await pool.execute(
        "UPDATE messages SET status = 'sending' WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    await client.post(f"{path}/pause")  # nothing waiting: both are mid-conversation
    await pool.execute(
        "UPDATE messages SET status = 'sent' WHERE campaign_id = $1",
        await row_pk(pool, "campaigns", made["id"]),
    )
    assert (await client.get(path)).data["status"] == "paused"
    assert (await client.post(f"{path}/resume")).data["status"] == "completed"
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'campaign.completed'") == 1


async def test_other_tenants_campaigns_are_invisible(client: Client, make_key: Any) -> None:
    made = await create_campaign(client)
    other = client.with_key(await make_key("rival", tier="starter", test=True))
    assert_error(await other.get(f"/campaigns/{made['id']}"), 404, "NOT_FOUND")
    assert_error(await other.post(f"/campaigns/{made['id']}/send"), 404, "NOT_FOUND")
    assert (await other.get("/campaigns")).data["items"] == []
