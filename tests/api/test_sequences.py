"""Sequences through real HTTP, the real MTA worker against an SMTP peer, and the real inbound
server over SMTP: steps go out one after another, threaded under step one, and a reply stops
the rest in the transaction that records it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from api import sequences
from api.keys import create_key
from api.server import ApiServer
from inbound.server import InboundServer
from mta.domains import add_domain
from penguinmails.config import Settings
from penguinmails.sequences import Scheduled, Scheduler, schedule
from tests.helpers import (
    Client,
    Receiver,
    assert_error,
    create_campaign,
    run_cli,
    verify,
    wait_for,
)
from tests.inbound.conftest import REPLY_ADDRESS, send
from tests.smtp_peer import SMTPPeer
from tracker.server import Tracker

Start = Callable[..., Awaitable[ApiServer]]

TWO_STEPS: dict[str, Any] = {
    "name": "welcome_series",
    "from": {"email": "sales@acme.test", "name": "Acme Sales"},
    "steps": [
        {
            "subject": 'Hello {{first_name | default: "there"}}',
            "content": {"text": 'Hi {{first_name | default: "there"}}, a first note.'},
        },
        {"delay": {"hours": 0}, "content": {"text": "Just following up."}},
    ],
}


@pytest.fixture
async def api(start_api: Start) -> ApiServer:
    """The API without its scheduler: the tests run it when they mean to, so what they count
    is theirs alone."""
    return await start_api(sequence_interval=None)


def _reply(to_message_id: str, sender: str, *, auto: bool = False) -> bytes:
    """A reply as a mail client writes one: In-Reply-To the message it answers."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = "sales@acme.test"
    mail["Subject"] = "Automatic reply: Hello" if auto else "Re: Hello"
    mail["Message-ID"] = f"<{'auto' if auto else 'reply'}-{sender}>"
    mail["In-Reply-To"] = f"<{to_message_id}>"
    mail["References"] = f"<{to_message_id}>"
    if auto:
        mail["Auto-Submitted"] = "auto-replied"
    mail.set_content("I am out of the office." if auto else "Thanks, not interested.")
    return mail.as_bytes()


@pytest.fixture
async def live(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    http: aiohttp.ClientSession,
    start_api: Start,
) -> tuple[Client, Settings]:
    """A live-mode key of an account with a sending domain whose mail reaches the peer; the
    API runs no scheduler of its own (the tests run it when they mean to)."""
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        inbound={"listen": "127.0.0.1:0", "metrics_listen": ""},
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
        mta={"routes": {"dest.test": smtp_peer.hop}},
    )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="acme", tier="professional")
        await add_domain(conn, settings, "acme.test", tenant="acme")
    api = await start_api(settings, sequence_interval=None)
    return Client(http, api.url + "/api/v1", key), settings


async def test_a_reply_stops_the_sequence_and_followups_thread_under_step_one(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
    receiver: Receiver,
) -> None:
    client, settings = live
    hook = await client.post("/webhooks", json={"url": receiver.url(), "events": ["email.replied"]})
    # Sent through two sending identities, rotating over the contacts.
    identities = []
    for name in ("ann", "bob"):
        made = await client.post("/identities", json={"email": f"{name}@acme.test", "name": name})
        assert made.status == 201, made.body
        identities.append(made.data["id"])
    made = await client.post(
        "/sequences", json={**TWO_STEPS, "settings": {"identities": identities}}
    )
    assert made.status == 201, made.body
    sequence = made.data
    assert sequence["id"].startswith("seq_") and len(sequence["steps"]) == 2
    assert sequence["stop_on"] == {
        "reply": True,
        "auto_reply": False,
        "bounce": True,
        "complaint": True,
        "unsubscribe": True,
        "click": False,
    }
    people = ["ann@dest.test", "bob@dest.test", "cy@dest.test"]
    enrolled = await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": people}
    )
    assert enrolled.status == 201, enrolled.body
    enrollments = {e["email"]: e for e in enrolled.data["items"]}
    assert set(enrollments) == set(people)
    assert all(e["id"].startswith("enr_") and e["step"] == 1 for e in enrollments.values())

    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 3, timeout=20)
    first = {r.rcpt_tos[0]: r.message for r in smtp_peer.received}
    assert set(first) == set(people)
    assert first["ann@dest.test"]["Subject"] == "Hello there"
    assert {str(m["From"]) for m in first.values()} == {
        "ann <ann@acme.test>",
        "bob <bob@acme.test>",
    }
    step_one_ids = {p: str(m["Message-ID"]).strip("<>") for p, m in first.items()}

    async def all_sent() -> bool:
        return bool(await pool.fetchval("SELECT count(*) = 3 FROM messages WHERE status = 'sent'"))

    await wait_for(all_sent, timeout=20)

    async with InboundServer(pool, settings) as inbound:
        for person, auto in (("ann@dest.test", False), ("bob@dest.test", True)):
            errors, answer = await send(
                inbound.port,
                _reply(step_one_ids[person], person, auto=auto),
                person,
                [REPLY_ADDRESS],
            )
            assert errors == {} and answer.startswith("2.0.0"), answer

    stopped = await client.get(
        f"/sequences/{sequence['id']}/enrollments", params={"status": "stopped"}
    )
    [ann] = stopped.data["items"]
    assert (ann["email"], ann["stop_reason"], ann["step"]) == ("ann@dest.test", "reply", 1)

    # Step two is queued for the two still running, once step one was accepted; a second
    # run queues nothing more.
    assert await schedule(pool) == Scheduled(queued=2)
    # A second run queues nothing (it may complete enrolments whose step two the worker
    # already delivered).
    assert (await schedule(pool)).queued == 0
    await wait_for(lambda: len(smtp_peer.received) == 5, timeout=20)
    followups = {r.rcpt_tos[0]: r.message for r in smtp_peer.received[3:]}
    assert set(followups) == {"bob@dest.test", "cy@dest.test"}
    for person, message in followups.items():
        thread = f"<{step_one_ids[person]}>"
        assert message["In-Reply-To"] == thread and message["References"] == thread
        assert message["Subject"] == "Re: Hello there"
        assert message["From"] == first[person]["From"]  # the identity of step one

    async def completed() -> bool:
        await schedule(pool)
        page = await client.get(
            f"/sequences/{sequence['id']}/enrollments", params={"status": "completed"}
        )
        return len(page.data["items"]) == 2

    await wait_for(completed, timeout=20)
    await worker.stop()

    stats = (await client.get(f"/sequences/{sequence['id']}/analytics")).data
    assert stats["enrollments"] == {"active": 0, "completed": 2, "stopped": 1}
    one, two = stats["steps"]
    assert (one["step"], one["sent"], one["replied"], one["stopped"]) == (1, 3, 1, 1)
    assert (two["step"], two["sent"], two["replied"], two["stopped"]) == (2, 2, 0, 0)

    # The reply's webhook names the sequence, the enrolment and the step.
    async with Tracker(pool, settings, dispatcher={"poll_interval": 0.05}):
        await wait_for(lambda: len(receiver.accepted()) == 1, timeout=15)
    payload = verify(hook.data["secret"], receiver.accepted()[0])
    assert payload["type"] == "email.replied"
    assert payload["data"]["sequence_id"] == sequence["id"]
    assert payload["data"]["enrollment_id"] == enrollments["ann@dest.test"]["id"]
    assert payload["data"]["step"] == 1

    # In the replies inbox, the reply says which sequence, enrolment and step it answers,
    # and the auto-reply is told apart from it.
    replies = {r["from"]: r for r in (await client.get("/replies")).data["items"]}
    ann = replies["ann@dest.test"]
    assert ann["category"] == "reply" and ann["sequence_id"] == sequence["id"]
    assert (ann["enrollment_id"], ann["step"]) == (enrollments["ann@dest.test"]["id"], 1)
    assert replies["bob@dest.test"]["category"] in ("auto_reply", "out_of_office")


# -- Without the MTA: step messages are marked sent by hand ------------------------------------

FOLLOW_UP_IN_AN_HOUR: dict[str, Any] = {
    "name": "nurture",
    "steps": [
        {"subject": "Hello", "content": {"text": "One."}},
        {"delay": {"hours": 1}, "content": {"text": "Two."}},
    ],
}


async def _sent(pool: asyncpg.Pool, recipient: str, step: int = 1) -> str:
    """Marks the recipient's step message accepted, as the MTA does on a 250; its Message-ID."""
    value = await pool.fetchval(
        "UPDATE messages m SET status = 'sent', sent_at = now() FROM sequence_messages sm "
        "WHERE sm.message_id = m.id AND sm.step = $2 AND m.recipient = $1 "
        "RETURNING m.message_id",
        recipient,
        step,
    )
    assert value is not None
    return str(value)


async def _create(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    made = await client.post("/sequences", json=body)
    assert made.status == 201, made.body
    return dict(made.data)


async def test_a_reply_cancels_the_queued_next_step_in_its_own_transaction(
    pool: asyncpg.Pool, client: Client, make_settings: Callable[..., Settings]
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
    )
    step_one = await _sent(pool, "sam@dest.test")
    assert await schedule(pool) == Scheduled(queued=1)
    waiting = await pool.fetchrow(
        "SELECT m.id, m.status, m.sandbox, m.next_attempt_at - s.sent_at AS delay "
        "FROM sequence_messages sm JOIN messages m ON m.id = sm.message_id "
        "JOIN messages s ON s.message_id = $1 WHERE sm.step = 2",
        step_one,
    )
    # Due an hour after step one was accepted; test mode stays test mode.
    assert waiting["status"] == "queued" and waiting["sandbox"] is True
    assert waiting["delay"].total_seconds() == pytest.approx(3600, abs=1)

    settings = make_settings(inbound={"listen": "127.0.0.1:0", "metrics_listen": ""})
    async with InboundServer(pool, settings) as inbound:
        errors, _ = await send(
            inbound.port, _reply(step_one, "sam@dest.test"), "sam@dest.test", [REPLY_ADDRESS]
        )
        assert errors == {}
    row = await pool.fetchrow(
        "SELECT m.status, e.data FROM messages m JOIN events e ON e.message_id = m.id "
        "AND e.type = 'email.cancelled' WHERE m.id = $1",
        waiting["id"],
    )
    assert row["status"] == "cancelled"
    assert row["data"]["reason"] == "sequence stopped: reply"
    [enrollment] = (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"]
    assert (enrollment["status"], enrollment["stop_reason"], enrollment["step"]) == (
        "stopped",
        "reply",
        2,
    )
    assert await schedule(pool) == Scheduled()


async def test_an_auto_reply_stops_only_where_asked(
    pool: asyncpg.Pool, client: Client, make_settings: Callable[..., Settings]
) -> None:
    sequence = await _create(client, {**FOLLOW_UP_IN_AN_HOUR, "stop_on": {"auto_reply": True}})
    assert sequence["stop_on"]["auto_reply"] is True
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
    )
    step_one = await _sent(pool, "sam@dest.test")
    settings = make_settings(inbound={"listen": "127.0.0.1:0", "metrics_listen": ""})
    async with InboundServer(pool, settings) as inbound:
        await send(
            inbound.port,
            _reply(step_one, "sam@dest.test", auto=True),
            "sam@dest.test",
            [REPLY_ADDRESS],
        )
    [enrollment] = (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"]
    assert (enrollment["status"], enrollment["stop_reason"]) == ("stopped", "auto_reply")
    assert await schedule(pool) == Scheduled()


async def test_steps_run_to_completion_and_a_rerun_sends_nothing_twice(
    pool: asyncpg.Pool, client: Client
) -> None:
    body = {**FOLLOW_UP_IN_AN_HOUR, "steps": [*FOLLOW_UP_IN_AN_HOUR["steps"]]}
    body["steps"][1] = {"delay": {"hours": 0}, "subject": "Own subject", "content": "<p>Two</p>"}
    sequence = await _create(client, body)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments",
        json={"contacts": ["a@dest.test", "b@dest.test"]},
    )
    # Step one is queued at enrolment; nothing is due until it is accepted.
    assert await schedule(pool) == Scheduled()
    await _sent(pool, "a@dest.test")
    assert await schedule(pool) == Scheduled(queued=1)
    assert await schedule(pool) == Scheduled()
    subject, headers = await pool.fetchrow(
        "SELECT m.subject, m.headers FROM sequence_messages sm JOIN messages m "
        "ON m.id = sm.message_id WHERE sm.step = 2"
    )
    assert subject == "Own subject" and set(headers) == {"In-Reply-To", "References"}
    await _sent(pool, "a@dest.test", step=2)
    assert await schedule(pool) == Scheduled(completed=1)
    assert await pool.fetchval("SELECT count(*) FROM sequence_messages") == 3
    # A step that failed at the MTA ends the enrolment, with the reason.
    await pool.execute("UPDATE messages SET status = 'failed' WHERE recipient = 'b@dest.test'")
    assert await schedule(pool) == Scheduled(stopped=1)
    page = (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"]
    assert {(e["email"], e["status"], e["stop_reason"]) for e in page} == {
        ("a@dest.test", "completed", None),
        ("b@dest.test", "stopped", "failed"),
    }


async def test_the_sequences_command_shows_enrolments_steps_and_replies(
    pool: asyncpg.Pool, client: Client, database_url: str, tmp_path: Path
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments",
        json={"contacts": ["a@dest.test", "b@dest.test"]},
    )
    await _sent(pool, "a@dest.test")
    code, out, err = await run_cli(database_url, tmp_path, "sequences", "--tenant", "acme")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if sequence["id"] in line]
    # tenant, mode, id, name, active, completed, stopped, sent, waiting, replies, a/b
    assert line.split()[3:] == ["nurture", "2", "0", "0", "1", "1", "0", "-"]
    code, out, _ = await run_cli(database_url, tmp_path, "sequences", "--tenant", "nobody")
    assert code == 0 and "no active sequences for tenant 'nobody'" in out


async def test_enrolment_is_once_unless_re_enroll_and_delete_stops_it(
    pool: asyncpg.Pool, client: Client
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    path = f"/sequences/{sequence['id']}/enrollments"
    [first] = (await client.post(path, json={"contacts": ["sam@dest.test"]})).data["items"]
    again = await client.post(path, json={"contacts": ["new@dest.test", "Sam@dest.test"]})
    error = assert_error(again, 409, "CONFLICT")
    assert error["details"] == [
        {"field": "contacts[1]", "message": "sam@dest.test is already enrolled"}
    ]
    # Refused whole: the other address was not enrolled either.
    assert await pool.fetchval("SELECT count(*) FROM sequence_enrollments") == 1
    assert_error(
        await client.post(path, json={"contacts": [first["contact_id"]], "re_enroll": True}),
        409,
        "CONFLICT",
    )

    stopped = await client.delete(f"{path}/{first['id']}")
    assert stopped.status == 200, stopped.body
    assert (stopped.data["status"], stopped.data["stop_reason"]) == ("stopped", "manual")
    cancelled = await pool.fetchrow(
        "SELECT m.status, e.data->>'reason' AS reason FROM messages m "
        "JOIN events e ON e.message_id = m.id AND e.type = 'email.cancelled'"
    )
    assert tuple(cancelled) == ("cancelled", "sequence stopped: manual")
    assert_error(await client.delete(f"{path}/{first['id']}"), 409, "CONFLICT")

    assert_error(await client.post(path, json={"contacts": ["sam@dest.test"]}), 409, "CONFLICT")
    [second] = (
        await client.post(path, json={"contacts": ["sam@dest.test"], "re_enroll": True})
    ).data["items"]
    assert second["id"] != first["id"] and second["status"] == "active"


async def test_enrol_by_tag_by_name_and_by_contact(pool: asyncpg.Pool, client: Client) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    ids = {}
    for email, tags in (("a@dest.test", ["vip"]), ("b@dest.test", ["vip"]), ("c@dest.test", [])):
        ids[email] = (await client.post("/contacts", json={"email": email, "tags": tags})).data[
            "id"
        ]
    path = f"/sequences/{sequence['id']}/enrollments"
    [a] = (await client.post(path, json={"contacts": [ids["a@dest.test"]]})).data["items"]
    tagged = await client.post(path, json={"tag": "vip"})
    assert tagged.status == 201, tagged.body
    assert [e["email"] for e in tagged.data["items"]] == ["b@dest.test"]
    assert tagged.data["skipped"] == 1

    # The documentation's trigger_sequence(contact.id, 'welcome_series'): by name or by id.
    by_name = await client.post(
        f"/contacts/{ids['c@dest.test']}/sequences", json={"sequence": "nurture"}
    )
    assert by_name.status == 201, by_name.body
    assert (by_name.data["sequence_id"], by_name.data["contact_id"]) == (
        sequence["id"],
        ids["c@dest.test"],
    )
    assert_error(
        await client.post(
            f"/contacts/{ids['c@dest.test']}/sequences", json={"sequence": sequence["id"]}
        ),
        409,
        "CONFLICT",
    )
    assert_error(
        await client.post(f"/contacts/{ids['c@dest.test']}/sequences", json={"sequence": "nope"}),
        404,
        "NOT_FOUND",
    )
    assert a["step"] == 1
    assert await pool.fetchval("SELECT count(*) FROM sequence_messages") == 3


async def test_validation_errors_name_the_field(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "steps": []}, "steps"),
        ({"name": "x", "steps": [{"content": {"text": "no subject"}}]}, "steps[0].subject"),
        (
            {"name": "x", "steps": [{"subject": "s", "content": {"text": "{{ broken"}}]},
            "steps[0].text",
        ),
        (
            {"name": "x", "steps": [{"subject": "s", "delay": {"hours": -1}, "content": "t"}]},
            "steps[0].delay.hours",
        ),
        ({**FOLLOW_UP_IN_AN_HOUR, "stop_on": {"unsubscribe": False}}, "stop_on.unsubscribe"),
    ]
    for body, field in cases:
        error = assert_error(await client.post("/sequences", json=body), 422, "VALIDATION_ERROR")
        assert field in [d["field"] for d in error["details"]], (field, error)

    sequence = await _create(
        client,
        {"name": "personal", "steps": [{"subject": "Hi {{first_name}}", "content": "Hello"}]},
    )
    path = f"/sequences/{sequence['id']}/enrollments"
    error = assert_error(
        await client.post(path, json={"contacts": ["x@dest.test"]}), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"].startswith("contacts[0].personalization")
    assert error["details"][0]["message"].startswith("step 1: x@dest.test: ")
    error = assert_error(
        await client.post(path, json={"contacts": ["ok@dest.test", "not an id"]}),
        422,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["field"] == "contacts[1]"
    assert_error(await client.post(path, json={}), 422, "VALIDATION_ERROR")


async def test_another_tenants_ids_are_not_found(
    client: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    [mine] = (
        await client.post(
            f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["a@dest.test"]}
        )
    ).data["items"]
    other = client.with_key(await make_key("globex", tier="enterprise", test=True))
    for reply in (
        await other.get(f"/sequences/{sequence['id']}"),
        await other.patch(f"/sequences/{sequence['id']}", json={"name": "mine now"}),
        await other.delete(f"/sequences/{sequence['id']}"),
        await other.get(f"/sequences/{sequence['id']}/enrollments"),
        await other.get(f"/sequences/{sequence['id']}/analytics"),
        await other.post(
            f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["b@dest.test"]}
        ),
        await other.delete(f"/sequences/{sequence['id']}/enrollments/{mine['id']}"),
        await other.post(f"/contacts/{mine['contact_id']}/sequences", json={"sequence": "nurture"}),
    ):
        assert_error(reply, 404, "NOT_FOUND")
    assert (await other.get("/sequences")).data["items"] == []
    theirs = await _create(other, FOLLOW_UP_IN_AN_HOUR)  # the same name is theirs to use
    assert_error(
        await client.post(
            f"/sequences/{theirs['id']}/enrollments", json={"contacts": [mine["contact_id"]]}
        ),
        404,
        "NOT_FOUND",
    )


async def test_update_list_and_archive(pool: asyncpg.Pool, client: Client) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    assert_error(await client.post("/sequences", json=FOLLOW_UP_IN_AN_HOUR), 409, "CONFLICT")
    changed = await client.patch(
        f"/sequences/{sequence['id']}",
        json={
            "steps": [
                {"subject": "New", "content": {"text": "One"}},
                {"delay": {"days": 2, "business_days": True}, "content": {"text": "Two"}},
                {"delay": {"days": 3}, "content": {"text": "Three"}},
            ],
            "stop_on": {"click": True},
        },
    )
    assert changed.status == 200, changed.body
    assert [s["delay"] for s in changed.data["steps"]][1:] == [
        {"days": 2, "business_days": True, "hours": 0},
        {"days": 3, "business_days": False, "hours": 0},
    ]
    assert changed.data["stop_on"]["click"] is True
    listed = (await client.get("/sequences")).data["items"]
    assert [s["id"] for s in listed] == [sequence["id"]] and listed[0]["livemode"] is False

    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["a@dest.test"]}
    )
    archived = await client.delete(f"/sequences/{sequence['id']}")
    assert (archived.status, archived.data["status"]) == (200, "archived")
    [enrollment] = (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"]
    assert (enrollment["status"], enrollment["stop_reason"]) == ("stopped", "archived")
    assert await pool.fetchval("SELECT status FROM messages") == "cancelled"
    assert_error(
        await client.post(
            f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["b@dest.test"]}
        ),
        409,
        "CONFLICT",
    )
    # Its name is free again.
    await _create(client, FOLLOW_UP_IN_AN_HOUR)


async def test_business_days_skip_the_weekend(pool: asyncpg.Pool) -> None:
    friday = "2026-11-27 15:00+00"
    saturday = "2026-11-28 15:00+00"
    for start, days, expected in (
        (friday, 1, "2026-11-30 15:00+00"),
        (friday, 5, "2026-12-04 15:00+00"),
        (saturday, 0, "2026-11-30 15:00+00"),
        (saturday, 1, "2026-12-01 15:00+00"),
    ):
        assert await pool.fetchval(
            "SELECT add_business_days($1::text::timestamptz, $2) = $3::text::timestamptz",
            start,
            days,
            expected,
        ), (start, days)


async def test_the_api_runs_the_scheduler_and_it_drains_on_stop(
    pool: asyncpg.Pool, start_api: Start, http: aiohttp.ClientSession, key: str
) -> None:
    api = await start_api(sequence_interval=0.05)
    client = Client(http, api.url + "/api/v1", key)
    body = {**FOLLOW_UP_IN_AN_HOUR, "steps": [FOLLOW_UP_IN_AN_HOUR["steps"][0], {"content": "x"}]}
    sequence = await _create(client, body)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["a@dest.test"]}
    )
    await _sent(pool, "a@dest.test")

    async def queued() -> bool:
        return bool(await pool.fetchval("SELECT count(*) = 2 FROM sequence_messages"))

    await wait_for(queued, timeout=10)
    await api.close()


async def test_sequences_need_the_starter_tier(
    client: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    free = client.with_key(await make_key("tiny", tier="free", test=True))
    error = assert_error(
        await free.post("/sequences", json=FOLLOW_UP_IN_AN_HOUR), 403, "TIER_REQUIRED"
    )
    assert error["details"] == [{"field": "tier", "message": "requires starter"}]


@pytest.mark.parametrize(
    ("event", "stops"),
    [
        ("email.bounced", "bounce"),
        ("email.complained", "complaint"),
        ("email.unsubscribed", "unsubscribe"),
        ("email.clicked", None),  # only where stop_on.click is asked for
        ("email.opened", None),
    ],
)
async def test_whoever_records_a_stopping_event_stops_the_enrolment(
    pool: asyncpg.Pool, client: Client, event: str, stops: str | None
) -> None:
    """The tracker (unsubscribes, clicks) and the MTA (bounces) write events as inbound does:
    the trigger on events stops the enrolment whichever role wrote it."""
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
    )
    await _sent(pool, "sam@dest.test")
    await schedule(pool)
    data = await pool.fetchval(
        "INSERT INTO events (tenant_id, message_id, type) "
        "SELECT tenant_id, id, $1 FROM messages WHERE status = 'sent' RETURNING data",
        event,
    )
    [enrollment] = (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"]
    waiting = await pool.fetchval("SELECT status FROM messages WHERE status <> 'sent'")
    if stops is None:
        assert enrollment["status"] == "active" and waiting == "queued"
    else:
        assert (enrollment["status"], enrollment["stop_reason"]) == ("stopped", stops)
        assert waiting == "cancelled"
        assert data == {"sequence_id": sequence["id"], "enrollment_id": enrollment["id"], "step": 1}


async def test_a_reply_recorded_while_the_scheduler_queues_the_next_step_cancels_it(
    pool: asyncpg.Pool, client: Client
) -> None:
    """The scheduler holds the enrolment while it queues step 2; the reply's transaction
    waits for it, then sees step 2 and cancels it: no step slips out between the two."""
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
    )
    await _sent(pool, "sam@dest.test")
    async with pool.acquire() as scheduler, scheduler.transaction():
        assert await schedule(scheduler) == Scheduled(queued=1)
        reply = asyncio.create_task(
            pool.execute(
                "INSERT INTO events (tenant_id, message_id, type) "
                "SELECT tenant_id, id, 'email.replied' FROM messages WHERE status = 'sent'"
            )
        )
        await asyncio.sleep(0.3)
        assert not reply.done()  # waiting for the scheduler's commit
    await reply
    statuses = await pool.fetch("SELECT status FROM messages ORDER BY id")
    assert [r["status"] for r in statuses] == ["sent", "cancelled"]


# -- Sending windows ---------------------------------------------------------------------------

NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("at", "spread", "expected", "skip"),
    [
        # Saturday morning in New York: Monday at the opening (spread 0).
        ("2026-11-28 12:00+00", 0.0, "2026-11-30 14:00+00", []),
        # Inside the window: kept as it is.
        ("2026-12-01 15:00+00", 0.9, "2026-12-01 15:00+00", []),
        # Before the opening the same day: that day's window, spread across it.
        ("2026-12-01 12:00+00", 0.0, "2026-12-01 14:00+00", []),
        # After closing: the next day's, half-way through its eight hours.
        ("2026-12-01 23:00+00", 0.5, "2026-12-02 18:00+00", []),
        # Christmas Day (a Friday) skipped: the Monday after.
        ("2026-12-24 23:00+00", 0.0, "2026-12-28 14:00+00", ["2026-12-25"]),
        # A skipped date that is today, inside the window: the next day's.
        ("2026-12-01 15:00+00", 0.0, "2026-12-02 14:00+00", ["2026-12-01"]),
        # Friday evening before the clocks change: Monday 09:00 is EDT (UTC-4), not EST.
        ("2026-03-06 23:00+00", 0.0, "2026-03-09 13:00+00", []),
    ],
)
async def test_the_next_moment_in_a_window(
    pool: asyncpg.Pool, at: str, spread: float, expected: str, skip: list[str]
) -> None:
    moved = await pool.fetchval(
        "SELECT next_in_window($1::text::timestamptz, NULL, 'America/New_York', "
        "ARRAY[1, 2, 3, 4, 5], '09:00', '17:00', $4::date[], $2) = $3::text::timestamptz",
        at,
        spread,
        expected,
        [date.fromisoformat(d) for d in skip],
    )
    assert moved, (at, spread, expected)


async def test_an_unknown_contact_zone_falls_back_to_the_sequences(pool: asyncpg.Pool) -> None:
    moved = await pool.fetchval(
        "SELECT next_in_window('2026-11-28 12:00+00', 'Mars/Olympus', 'America/New_York', "
        "ARRAY[1, 2, 3, 4, 5], '09:00', '17:00', '{}', 0)"
    )
    assert moved == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


async def test_no_step_is_due_outside_the_window_in_the_recipients_zone(
    pool: asyncpg.Pool, client: Client
) -> None:
    """Weekdays 09:00-17:00 in New York (Tokyo for one contact), with a controlled clock: a
    Saturday. Every step's due time, step 1's at enrolment (the real clock) included, is in
    its recipient's window, and the held steps are spread across it."""
    window = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
    sequence = await _create(
        client,
        {**FOLLOW_UP_IN_AN_HOUR, "window": {**window, "timezone": "America/New_York"}},
    )
    assert sequence["window"] == {
        **window,
        "start": "09:00:00",
        "end": "17:00:00",
        "timezone": "America/New_York",
        "skip_dates": [],
        "holidays": None,
        "holidays_until": None,
    }
    people = [f"p{i}@dest.test" for i in range(10)]
    await client.post(
        "/contacts", json={"email": "tokyo@dest.test", "custom_fields": {"timezone": "Asia/Tokyo"}}
    )
    await client.post(
        f"/sequences/{sequence['id']}/enrollments",
        json={"contacts": [*people, "tokyo@dest.test"]},
    )
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    await pool.execute("UPDATE messages SET status = 'sent', sent_at = $1", saturday)
    assert await schedule(pool, now=saturday) == Scheduled(queued=11)

    rows = await pool.fetch(
        "SELECT m.recipient, m.next_attempt_at, sm.step FROM sequence_messages sm "
        "JOIN messages m ON m.id = sm.message_id"
    )
    assert len(rows) == 22
    for row in rows:
        zone = ZoneInfo("Asia/Tokyo") if row["recipient"] == "tokyo@dest.test" else NEW_YORK
        local = row["next_attempt_at"].astimezone(zone)
        assert local.isoweekday() <= 5 and 9 <= local.hour < 17, (row["recipient"], local)
    held = [r["next_attempt_at"] for r in rows if r["step"] == 2 and r["recipient"] in people]
    # Monday, spread across the window rather than all at 09:00.
    assert {t.astimezone(NEW_YORK).date() for t in held} == {datetime(2026, 11, 30).date()}
    assert len(set(held)) == len(held)

    error = assert_error(
        await client.patch(
            f"/sequences/{sequence['id']}",
            json={"window": {"start": "17:00", "end": "09:00", "timezone": "Nowhere/Atlantis"}},
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert "window.timezone" in [d["field"] for d in error["details"]]
    holidays = await client.patch(
        f"/sequences/{sequence['id']}",
        json={"window": {**window, "skip_dates": ["2026-12-25", "2026-12-24", "2026-12-25"]}},
    )
    assert holidays.data["window"]["skip_dates"] == ["2026-12-24", "2026-12-25"]
    cleared = await client.patch(f"/sequences/{sequence['id']}", json={"window": None})
    assert cleared.data["window"] is None


async def test_deleting_a_contact_cancels_its_waiting_step(
    pool: asyncpg.Pool, client: Client
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    [enrollment] = (
        await client.post(
            f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
        )
    ).data["items"]
    deleted = await client.delete(f"/contacts/{enrollment['contact_id']}")
    assert deleted.status == 200, deleted.body
    row = await pool.fetchrow(
        "SELECT m.status, e.data->>'reason' AS reason FROM messages m "
        "JOIN events e ON e.message_id = m.id AND e.type = 'email.cancelled'"
    )
    assert tuple(row) == ("cancelled", "sequence stopped: deleted")
    assert (await client.get(f"/sequences/{sequence['id']}/enrollments")).data["items"] == []


async def test_the_scheduler_runs_at_once_and_stops_without_waiting_out_its_interval(
    pool: asyncpg.Pool, client: Client
) -> None:
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": ["sam@dest.test"]}
    )
    await _sent(pool, "sam@dest.test")
    scheduler = Scheduler(pool, interval=3600)
    scheduler.start()

    async def queued() -> bool:
        return bool(await pool.fetchval("SELECT count(*) = 2 FROM sequence_messages"))

    await wait_for(queued, timeout=10)
    await asyncio.wait_for(scheduler.stop(), timeout=2)


async def test_concurrent_schedulers_queue_each_step_once(
    pool: asyncpg.Pool, client: Client, tenant_id: int
) -> None:
    """Two API processes' schedulers over the same enrolments, in small batches so they
    interleave: each enrolment gets its step once, and none is taken for one whose message
    went missing (what a recheck against the outer join would do)."""
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    sequence_pk = await pool.fetchval(
        "SELECT id FROM sequences WHERE public_id = $1", sequence["id"]
    )
    await pool.execute(
        "INSERT INTO contacts (tenant_id, email) "
        "SELECT $1, 'c' || g || '@dest.test' FROM generate_series(1, 2000) g",
        tenant_id,
    )
    await pool.execute(
        "INSERT INTO sequence_enrollments (tenant_id, sequence_id, contact_id) "
        "SELECT $1, $2, id FROM contacts WHERE tenant_id = $1",
        tenant_id,
        sequence_pk,
    )
    done = await asyncio.gather(*(schedule(pool, batch=50) for _ in range(3)))
    assert sum(d.queued for d in done) == 2000 and sum(d.stopped for d in done) == 0
    states = await pool.fetch(
        "SELECT status, step, count(*) AS n FROM sequence_enrollments GROUP BY 1, 2"
    )
    assert [tuple(r) for r in states] == [("active", 1, 2000)]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 2000


async def test_a_large_tag_is_enrolled_batch_by_batch(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sequences, "MAX_TAG_ENROLL", 2)
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    for i in range(3):
        await client.post("/contacts", json={"email": f"t{i}@dest.test", "tags": ["big"]})
    path = f"/sequences/{sequence['id']}/enrollments"
    first = (await client.post(path, json={"tag": "big"})).data
    second = (await client.post(path, json={"tag": "big"})).data
    third = (await client.post(path, json={"tag": "big"})).data
    assert [len(first["items"]), len(second["items"]), len(third["items"])] == [2, 1, 0]
    assert [first["skipped"], second["skipped"], third["skipped"]] == [0, 2, 3]


async def test_enrol_a_campaigns_recipients(
    pool: asyncpg.Pool, client: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    """Those it was sent to and those a draft holds, as contacts (an existing one is found,
    a new address becomes one); enrolled once, the rest skipped."""
    existing = await client.post("/contacts", json={"email": "ann@dest.test"})
    sent = await create_campaign(client)
    await client.post(f"/campaigns/{sent['id']}/send")
    await client.post(
        "/emails/send-bulk",
        json={
            "campaign_id": sent["id"],
            "recipients": [{"email": "Cy@Dest.test", "personalization": {"first_name": "Cy"}}],
        },
    )
    sequence = await _create(client, FOLLOW_UP_IN_AN_HOUR)
    path = f"/sequences/{sequence['id']}/enrollments"
    enrolled = await client.post(path, json={"campaign_id": sent["id"]})
    assert enrolled.status == 201, enrolled.body
    items = {e["email"]: e for e in enrolled.data["items"]}
    assert set(items) == {"ann@dest.test", "bob@dest.test", "cy@dest.test"}
    assert items["ann@dest.test"]["contact_id"] == existing.data["id"]
    assert all(e["step"] == 1 for e in items.values())
    again = await client.post(path, json={"campaign_id": sent["id"]})
    assert (again.data["items"], again.data["skipped"]) == ([], 3)

    draft = await create_campaign(
        client, recipients=[{"email": "dee@dest.test", "personalization": {"first_name": "D"}}]
    )
    from_draft = await client.post(path, json={"campaign_id": draft["id"]})
    assert [e["email"] for e in from_draft.data["items"]] == ["dee@dest.test"]

    assert_error(await client.post(path, json={"campaign_id": "campaign_nope"}), 404, "NOT_FOUND")
    other = client.with_key(await make_key("other", tier="starter", test=True))
    theirs = await create_campaign(other)
    assert_error(await client.post(path, json={"campaign_id": theirs["id"]}), 404, "NOT_FOUND")
