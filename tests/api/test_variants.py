"""A/B variants through real HTTP and the real database: a campaign's recipients split by
weight, results per variant from real events, and the winner taking the held recipients
(which the MTA's real claim never takes before); sequence steps with variants and a winner
that later steps get."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from mta.queue import claim
from penguinmails.ab import decide
from penguinmails.sequences import Scheduler, schedule
from tests.helpers import Client, assert_error, campaign_body, row_pk, run_cli, wait_for

VARIANTS = [
    {"name": "A", "weight": 80, "subject": "Subject A"},
    {"name": "B", "weight": 20, "html": "<p>Body B</p>", "text": "Body B"},
]


def _recipients(n: int) -> list[dict[str, Any]]:
    return [{"email": f"r{i}@dest.test"} for i in range(n)]


async def _campaign(client: Client, **changes: Any) -> dict[str, Any]:
    body = campaign_body(
        subject="Base subject",
        content={"html": "<p>Base</p>", "text": "Base"},
        **changes,
    )
    made = await client.post("/campaigns", json=body)
    assert made.status == 201, made.body
    return dict(made.data)


async def _event(pool: asyncpg.Pool, message_id: int, kind: str) -> None:
    await pool.execute(
        "INSERT INTO events (tenant_id, message_id, campaign_id, type, is_unique) "
        "SELECT tenant_id, id, campaign_id, $2, true FROM messages WHERE id = $1",
        message_id,
        kind,
    )


async def _deliver(pool: asyncpg.Pool, ids: list[int], at: datetime) -> None:
    """What the MTA records on a 250: the message sent, with its email.delivered."""
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = $2 WHERE id = ANY ($1::bigint[])", ids, at
    )
    for i in ids:
        await _event(pool, i, "email.delivered")


async def test_recipients_split_by_weight_and_results_come_per_variant(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await _campaign(client, variants=VARIANTS, recipients=_recipients(1000))
    assert [v["name"] for v in made["variants"]] == ["A", "B"]
    assert made["variants"][0]["subject"] == "Subject A" and made["variants"][0]["html"] is None
    sent = await client.post(f"/campaigns/{made['id']}/send")
    assert sent.status == 202, sent.body
    campaign_pk = await row_pk(pool, "campaigns", made["id"])
    rows = await pool.fetch(
        "SELECT id, variant, subject, html_body, text_body, status FROM messages "
        "WHERE campaign_id = $1 ORDER BY id",
        campaign_pk,
    )
    assert len(rows) == 1000 and {r["status"] for r in rows} == {"queued"}
    by_variant: dict[str, list[asyncpg.Record]] = {"A": [], "B": []}
    for row in rows:
        by_variant[row["variant"]].append(row)
    # Binomial(1000, 0.8): mean 800, sd 12.6; five sd either way fails once in 3.5 million.
    assert abs(len(by_variant["A"]) - 800) <= 5 * math.sqrt(1000 * 0.8 * 0.2)
    # Each variant's parts replace the base content's, and only those.
    assert {(r["subject"], r["html_body"], r["text_body"]) for r in by_variant["A"]} == {
        ("Subject A", "<p>Base</p>", "Base")
    }
    assert {(r["subject"], r["html_body"], r["text_body"]) for r in by_variant["B"]} == {
        ("Base subject", "<p>Body B</p>", "Body B")
    }

    # Real events: 10 of A's and 10 of B's delivered; 4 of A's opened, 1 clicked; 3 of B's
    # opened, 2 replied; one more of B's bounced.
    a = [r["id"] for r in by_variant["A"]]
    b = [r["id"] for r in by_variant["B"]]
    now = datetime.now(UTC)
    await _deliver(pool, a[:10] + b[:10], now)
    for i in a[:4] + b[:3]:
        await _event(pool, i, "email.opened")
    await _event(pool, a[0], "email.opened")  # a second open of one message counts once
    await _event(pool, a[1], "email.clicked")
    for i in b[:2]:
        await _event(pool, i, "email.replied")
    await pool.execute("UPDATE messages SET status = 'bounced' WHERE id = $1", b[10])
    await _event(pool, b[10], "email.bounced")

    data = (await client.get(f"/analytics/campaigns/{made['id']}")).data
    stats = {v["name"]: v for v in data["variants"]}
    assert stats["A"] == {
        "name": "A",
        "weight": 80,
        "sent": len(a),
        "delivered": 10,
        "opened": 4,
        "clicked": 1,
        "replied": 0,
        "bounced": 0,
        "delivery_rate": round(10 / len(a), 4),
        "open_rate": 0.4,
        "click_rate": 0.1,
        "reply_rate": 0.0,
        "bounce_rate": 0.0,
    }
    assert (stats["B"]["sent"], stats["B"]["delivered"], stats["B"]["opened"]) == (len(b), 10, 3)
    assert (stats["B"]["replied"], stats["B"]["reply_rate"], stats["B"]["bounced"]) == (2, 0.2, 1)
    assert data["ab_winner"] is None


async def test_variants_are_checked_and_named_in_errors(client: Client) -> None:
    error = assert_error(
        await client.post(
            "/campaigns",
            json=campaign_body(variants=[{"name": "A"}, {"name": "A", "subject": "x"}]),
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "variants"
    error = assert_error(
        await client.post(
            "/campaigns",
            json=campaign_body(variants=[{"name": "A", "subject": "Hi\r\nBcc: x@y.test"}]),
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "variants[0].subject"
    error = assert_error(
        await client.post(
            "/campaigns",
            json=campaign_body(
                variants=[{"name": "A"}], ab_test={"winner_by": "reply_rate", "min_sample": 5}
            ),
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "ab_test"
    # A variable a variant adds must have a value for every recipient.
    error = assert_error(
        await client.post(
            "/campaigns",
            json=campaign_body(
                variants=[{"name": "A"}, {"name": "B", "subject": "Hi {{company}}"}]
            ),
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["message"].startswith("variants[1] (B): ")


AB_TEST = {"winner_by": "reply_rate", "min_sample": 5, "wait_hours": 2, "test_fraction": 0.4}
HALF_AND_HALF = [
    {"name": "A", "weight": 1, "subject": "Subject A"},
    {"name": "B", "weight": 1, "subject": "Subject B"},
]


async def test_the_winner_takes_the_held_recipients(client: Client, pool: asyncpg.Pool) -> None:
    made = await _campaign(
        client, variants=HALF_AND_HALF, ab_test=AB_TEST, recipients=_recipients(100)
    )
    assert made["ab_test"] == AB_TEST and made["ab_winner"] is None
    await client.post(f"/campaigns/{made['id']}/send")
    campaign_pk = await row_pk(pool, "campaigns", made["id"])
    counts = dict(
        await pool.fetch(
            "SELECT status, count(*) FROM messages WHERE campaign_id = $1 GROUP BY 1", campaign_pk
        )
    )
    assert counts == {"queued": 40, "held": 60}

    # The MTA's claim takes the test messages and never a held one.
    claimed = await claim(pool, 1000, "test-worker", 60)
    assert len(claimed) == 40 and {c["subject"] for c in claimed} <= {"Subject A", "Subject B"}
    tests = await pool.fetch(
        "SELECT id, variant FROM messages WHERE campaign_id = $1 AND variant IS NOT NULL",
        campaign_pk,
    )
    assert len(tests) == 40
    a = [r["id"] for r in tests if r["variant"] == "A"]
    b = [r["id"] for r in tests if r["variant"] == "B"]
    assert len(a) >= 5 and len(b) >= 5  # 40 at 50/50: fewer than 5 of one is 1 in 10^6
    now = datetime.now(UTC)
    await _deliver(pool, a + b, now - timedelta(hours=1))
    await _event(pool, a[0], "email.replied")
    for i in b[:3]:
        await _event(pool, i, "email.replied")

    # Delivered an hour ago, with wait_hours 2: replies may still come, no decision yet.
    assert await decide(pool) == 0
    assert await decide(pool, now=now + timedelta(minutes=59)) == 0
    await pool.execute(
        "UPDATE messages SET sent_at = $2 WHERE id = ANY ($1::bigint[])",
        a + b,
        now - timedelta(hours=2, minutes=1),
    )
    assert await decide(pool) == 1
    assert await decide(pool) == 0  # decided once

    shown = (await client.get(f"/campaigns/{made['id']}")).data
    winner = shown["ab_winner"]
    assert winner["variant"] == "B" and winner["winner_by"] == "reply_rate"
    assert {v["name"]: v["sample"] for v in winner["variants"]} == {"A": len(a), "B": len(b)}
    assert {v["name"]: v["rate"] for v in winner["variants"]} == {
        "A": round(1 / len(a), 4),
        "B": round(3 / len(b), 4),
    }
    released = await pool.fetch(
        "SELECT status, variant, subject FROM messages "
        "WHERE campaign_id = $1 AND NOT id = ANY ($2::bigint[])",
        campaign_pk,
        a + b,
    )
    assert len(released) == 60
    assert {tuple(r) for r in released} == {("queued", "B", "Subject B")}
    assert len(await claim(pool, 1000, "test-worker", 60)) == 60
    event = await pool.fetchrow(
        "SELECT campaign_id, data FROM events WHERE type = 'ab_test.decided'"
    )
    assert event["campaign_id"] == campaign_pk
    assert event["data"]["variant"] == "B" and event["data"]["released"] == 60
    assert event["data"]["scope"] == "campaign"
    analytics = (await client.get(f"/analytics/campaigns/{made['id']}")).data
    assert analytics["ab_winner"]["variant"] == "B"
    assert {v["name"]: v["sent"] for v in analytics["variants"]} == {"A": len(a), "B": 60 + len(b)}


async def test_a_test_that_cannot_reach_its_sample_is_decided_on_what_there_is(
    client: Client, pool: asyncpg.Pool
) -> None:
    """Every test message final (here: bounced) and matured: the held recipients are not
    left waiting for a sample that cannot come."""
    made = await _campaign(
        client,
        variants=HALF_AND_HALF,
        ab_test={**AB_TEST, "min_sample": 1000, "wait_hours": 0},
        recipients=_recipients(10),
    )
    await client.post(f"/campaigns/{made['id']}/send")
    campaign_pk = await row_pk(pool, "campaigns", made["id"])
    assert await decide(pool) == 0  # test messages still waiting
    await pool.execute(
        "UPDATE messages SET status = 'bounced' WHERE campaign_id = $1 AND status = 'queued'",
        campaign_pk,
    )
    assert await decide(pool) == 1
    statuses = await pool.fetch(
        "SELECT DISTINCT status FROM messages WHERE campaign_id = $1 AND status <> 'bounced'",
        campaign_pk,
    )
    assert [r["status"] for r in statuses] == ["queued"]


async def test_cancelling_cancels_held_recipients_and_held_ones_keep_it_sending(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await _campaign(
        client, variants=HALF_AND_HALF, ab_test=AB_TEST, recipients=_recipients(10)
    )
    await client.post(f"/campaigns/{made['id']}/send")
    campaign_pk = await row_pk(pool, "campaigns", made["id"])
    # Every test message final: the campaign is still sending while recipients are held.
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = now() "
        "WHERE campaign_id = $1 AND status = 'queued'",
        campaign_pk,
    )
    await pool.execute("SELECT campaign_try_complete($1)", campaign_pk)
    assert (await client.get(f"/campaigns/{made['id']}")).data["status"] == "sending"
    cancelled = await client.post(f"/campaigns/{made['id']}/cancel")
    assert cancelled.status == 200, cancelled.body
    assert not await pool.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id = $1 AND status = 'held'", campaign_pk
    )


async def test_send_bulk_gives_variants_and_the_winner_once_decided(
    client: Client, pool: asyncpg.Pool
) -> None:
    made = await _campaign(client, variants=HALF_AND_HALF, recipients=[])
    bulk = await client.post(
        "/emails/send-bulk", json={"campaign_id": made["id"], "recipients": _recipients(50)}
    )
    assert bulk.status == 202, bulk.body
    variants = await pool.fetch(
        "SELECT variant, subject, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1"
    )
    assert [(r["variant"], r["subject"]) for r in variants] == [
        ("A", "Subject A"),
        ("B", "Subject B"),
    ]


# -- Sequences ---------------------------------------------------------------------------------

SEQUENCE: dict[str, Any] = {
    "name": "ab",
    "steps": [
        {"subject": "Base", "content": {"text": "One."}, "variants": HALF_AND_HALF},
        {"delay": {"hours": 1}, "content": {"text": "Two."}},
    ],
    "ab_test": {"winner_by": "click_rate", "min_sample": 3, "wait_hours": 0},
}


async def test_sequence_steps_get_variants_and_the_winner_after_the_decision(
    client: Client, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    made = await client.post("/sequences", json=SEQUENCE)
    assert made.status == 201, made.body
    sequence = made.data
    assert [v["name"] for v in sequence["steps"][0]["variants"]] == ["A", "B"]
    assert sequence["ab_test"]["winner_by"] == "click_rate"
    path = f"/sequences/{sequence['id']}/enrollments"
    await client.post(path, json={"contacts": [f"s{i}@dest.test" for i in range(30)]})
    rows = await pool.fetch("SELECT id, variant, subject FROM messages ORDER BY id")
    assert len(rows) == 30
    assert all(r["subject"] == f"Subject {r['variant']}" for r in rows)
    a = [r["id"] for r in rows if r["variant"] == "A"]
    b = [r["id"] for r in rows if r["variant"] == "B"]
    assert len(a) >= 3 and len(b) >= 3  # fewer than 3 of 30 at 50/50: 1 in 2 million

    # Not decided before each variant has 3 delivered.
    await _deliver(pool, a[:3] + b[:2], datetime.now(UTC))
    assert await decide(pool) == 0
    await _deliver(pool, a[3:] + b[2:], datetime.now(UTC))
    for i in a[:2]:
        await _event(pool, i, "email.clicked")
    assert await decide(pool) == 1

    stats = (await client.get(f"/sequences/{sequence['id']}/analytics")).data
    one = stats["steps"][0]
    assert one["ab_winner"]["variant"] == "A"
    assert {v["name"]: (v["sent"], v["clicked"]) for v in one["variants"]} == {
        "A": (len(a), 2),
        "B": (len(b), 0),
    }
    assert stats["steps"][1]["variants"] == []  # step 2 has none
    code, out, err = await run_cli(database_url, tmp_path, "sequences")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if sequence["id"] in line]
    assert line.split()[-1] == "1:A"
    event = await pool.fetchval("SELECT data FROM events WHERE type = 'ab_test.decided'")
    assert (event["scope"], event["sequence_id"], event["step"]) == (
        "sequence_step",
        sequence["id"],
        1,
    )

    # Enrolled after the decision: every step 1 is the winner's; step 2 has no variant.
    await client.post(path, json={"contacts": [f"late{i}@dest.test" for i in range(10)]})
    late = await pool.fetch(
        "SELECT variant, subject FROM messages WHERE recipient LIKE 'late%' ORDER BY id"
    )
    assert {tuple(r) for r in late} == {("A", "Subject A")}
    assert await schedule(pool) is not None
    step_two = await pool.fetch(
        "SELECT m.variant FROM messages m JOIN sequence_messages sm ON sm.message_id = m.id "
        "WHERE sm.step = 2"
    )
    assert step_two and {r["variant"] for r in step_two} == {None}


async def test_the_api_processs_scheduler_decides(client: Client, pool: asyncpg.Pool) -> None:
    """The decision is the scheduler's tick's (the task the API process owns), not only a
    function a test calls."""
    made = await _campaign(
        client,
        variants=HALF_AND_HALF,
        ab_test={**AB_TEST, "min_sample": 1, "wait_hours": 0},
        recipients=_recipients(10),
    )
    await client.post(f"/campaigns/{made['id']}/send")
    await pool.execute(
        "UPDATE messages SET status = 'sent', sent_at = now() - interval '1 minute' "
        "WHERE status = 'queued'"
    )
    scheduler = Scheduler(pool, interval=3600)
    scheduler.start()

    async def decided() -> bool:
        return bool(await pool.fetchval("SELECT ab_winner IS NOT NULL FROM campaigns"))

    await wait_for(decided, timeout=10)
    await asyncio.wait_for(scheduler.stop(), timeout=2)
    assert not await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'held'")
