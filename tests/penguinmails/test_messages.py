"""A draft is checked before it is queued: every recipient has a value for every variable, the
templates parse, and nothing personalised can inject a header. Queued, each message is
recorded `email.sent` in the same statement (a suppressed recipient is not)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from penguinmails.messages import Draft, InvalidMessage, enqueue, ensure_tenant


def draft(**fields) -> Draft:
    base: dict = {
        "from_email": "news@acme.test",
        "subject": "Hi {{name}}",
        "recipients": ["a@dest.test", "b@dest.test"],
        "text": "Hello {{name}} from {{company | default: 'us'}}",
    }
    base.update(fields)
    return Draft(**base)


def test_enqueue_refuses_a_recipient_without_a_value():
    with pytest.raises(InvalidMessage) as caught:
        draft(personalization=[{"name": "Ann"}, {"company": "Acme"}]).validate()
    assert caught.value.field == "personalization[1]"
    assert "name" in caught.value.message
    with pytest.raises(InvalidMessage):
        draft().validate()  # no personalization at all
    draft(personalization=[{"name": "Ann"}, {"name": "Bob"}]).validate()


def test_enqueue_accepts_builtins_and_defaults():
    draft(
        subject="News",
        text="{{ email }} can leave: {{unsubscribe_url}} {{x | default: ''}}",
    ).validate()


def test_enqueue_reports_template_syntax_errors_by_field():
    with pytest.raises(InvalidMessage) as caught:
        draft(html="<p>{{name</p>", personalization=[{"name": "a"}, {"name": "b"}]).validate()
    assert caught.value.field == "html"


def test_a_personalised_subject_cannot_inject_headers():
    with pytest.raises(InvalidMessage, match="CR or LF"):
        draft(personalization=[{"name": "Ann\r\nBcc: x@evil.test"}, {"name": "Bob"}]).validate()
    # Only values the subject uses matter; the body may hold line breaks.
    draft(
        subject="Hi",
        text="{{bio}}",
        personalization=[{"bio": "a\nb"}, {"bio": "c"}],
    ).validate()


async def test_enqueue_records_each_message_sent_in_the_same_statement(pool: asyncpg.Pool):
    tenant = await ensure_tenant(pool, "acme")
    await pool.execute(
        "INSERT INTO suppressions (tenant_id, email, reason) VALUES ($1, 'gone@dest.test', 'x')",
        tenant,
    )
    recipients = ["a@dest.test", "Gone@dest.test", "c@dest.test"]
    ids = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="Hi",
            recipients=recipients,
            text="Hi",
            campaign_id=42,
        ),
    )

    rows = await pool.fetch("SELECT id, recipient FROM messages ORDER BY id")
    assert [(r["id"], r["recipient"]) for r in rows] == list(zip(ids, recipients, strict=True))
    events = await pool.fetch(
        "SELECT e.message_id, e.tenant_id, e.campaign_id, e.data, e.xmin::text AS tx,"
        "       m.xmin::text AS message_tx"
        " FROM events e JOIN messages m ON m.id = e.message_id WHERE e.type = 'email.sent'"
        " ORDER BY e.message_id"
    )
    assert [e["message_id"] for e in events] == [ids[0], ids[2]]  # not the suppressed one
    assert {(e["tenant_id"], e["campaign_id"]) for e in events} == {(tenant, 42)}
    assert all(e["tx"] == e["message_tx"] for e in events)  # one transaction with the rows
    assert all(e["data"] == {} for e in events)
    rollup = await pool.fetchval(
        "SELECT total FROM campaign_stats WHERE campaign_id = 42 AND type = 'email.sent'"
    )
    assert rollup == 2


async def test_a_scheduled_message_is_sent_for_its_time_and_a_refused_batch_records_nothing(
    pool: asyncpg.Pool,
):
    tenant = await ensure_tenant(pool, "acme")
    at = datetime.now(UTC) + timedelta(days=1)
    [queued] = await enqueue(
        pool,
        tenant,
        Draft(
            from_email="news@acme.test",
            subject="Hi",
            recipients=["a@dest.test"],
            text="Hi",
            send_at=at,
        ),
    )
    data = await pool.fetchval("SELECT data FROM events WHERE message_id = $1", queued)
    assert datetime.fromisoformat(data["send_at"]) == at

    test_mode = await ensure_tenant(pool, "acme", mode="test")
    with pytest.raises(asyncpg.CheckViolationError):  # test mode must be sandbox mail
        await enqueue(
            pool,
            test_mode,
            Draft(from_email="news@acme.test", subject="Hi", recipients=["b@dest.test"], text="Hi"),
        )
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
