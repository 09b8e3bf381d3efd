"""Sending identities through real HTTP, the real MTA (two processes' workers at once) and an
SMTP peer: caps hold across processes and say why a message waits, a sequence's contact keeps
its identity, gaps space the sends, warm-up ramps, a relay gets the identity's credentials over
verified TLS only, and the breaker pauses a bouncing identity while the other keeps sending."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import trustme

from api.keys import create_key
from api.server import ApiServer
from mta.domains import add_domain
from penguinmails.config import Settings
from penguinmails.sequences import schedule
from tests.helpers import Client, assert_error, campaign_body, wait_for
from tests.smtp_peer import SMTPPeer

Start = Callable[..., Awaitable[ApiServer]]


def identity(email: str, **fields: Any) -> dict[str, Any]:
    return {"email": email, "name": email.split("@")[0].title(), **fields}


@pytest.fixture
async def live(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    http: aiohttp.ClientSession,
    start_api: Start,
) -> tuple[Client, Settings]:
    """A live key of an account whose domain acme.test reaches the peer; no scheduler in the
    API (the tests run it)."""
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "breaker": {
                "min_sample": 10,
                "broad_min_sample": 100,
                "max_bounce_rate": 0.1,
                "check_interval": 0.1,
            },
        },
    )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="acme", tier="starter")
        await add_domain(conn, settings, "acme.test", tenant="acme")
    api = await start_api(settings, sequence_interval=None)
    return Client(http, api.url + "/api/v1", key), settings


async def _make(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    made = await client.post("/identities", json=body)
    assert made.status == 201, made.body
    return dict(made.data)


async def test_identities_are_checked_at_the_door_and_their_relay_password_is_sealed(
    pool: asyncpg.Pool, live: tuple[Client, Settings], make_key: Any
) -> None:
    client, settings = live
    made = await _make(
        client,
        identity(
            "ann@acme.test",
            signature={"text": "Ann, Acme"},
            daily_cap=50,
            hourly_cap=10,
            min_gap_seconds=60,
            random_gap_seconds=30,
            warmup={"start": 5, "step": 5},
        ),
    )
    assert made["id"].startswith("idn_") and made["status"] == "active"
    assert made["usage"] == {
        "sent_last_day": 0,
        "sent_last_hour": 0,
        "daily_limit": 5,  # the warm-up's first day
        "held": 0,
        "next_send_at": None,
    }
    # Another tenant's domain, and caps that contradict each other, are refused by field.
    wrong = await client.post("/identities", json=identity("eve@elsewhere.test"))
    assert assert_error(wrong, 422, "VALIDATION_ERROR")["details"][0]["field"] == "email"
    bad = await client.post("/identities", json=identity("bo@acme.test", daily_cap=5, hourly_cap=6))
    assert assert_error(bad, 422, "VALIDATION_ERROR")["details"][0]["field"] == "hourly_cap"
    injected = await client.post("/identities", json=identity("x@acme.test", name="A\r\nBcc: y"))
    assert assert_error(injected, 422, "VALIDATION_ERROR")["details"][0]["field"] == "name"
    again = await client.post("/identities", json=identity("ANN@acme.test"))
    assert_error(again, 409, "CONFLICT")

    # Its own relay lets any address through (the provider answers for it); the password is
    # sealed at rest and never shown.
    relayed = await _make(
        client,
        identity(
            "cy@gmail.example",
            relay={
                "host": "smtp.gmail.example",
                "port": 587,
                "username": "cy",
                "password": "app-password-1",
            },
        ),
    )
    assert relayed["relay"] == {
        "host": "smtp.gmail.example",
        "port": 587,
        "username": "cy",
        "password_set": True,
    }
    stored = await pool.fetchval(
        "SELECT relay_password FROM identities WHERE public_id = $1", relayed["id"]
    )
    assert b"app-password-1" not in stored
    no_password = await client.post(
        "/identities",
        json=identity(
            "dee@gmail.example", relay={"host": "h.example", "port": 587, "username": "d"}
        ),
    )
    assert assert_error(no_password, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "relay.password"
    )

    changed = await client.patch(f"/identities/{made['id']}", json={"daily_cap": 40})
    assert changed.status == 200 and changed.data["daily_cap"] == 40
    paused = await client.post(f"/identities/{made['id']}/pause", json={"reason": "vacation"})
    assert (paused.data["status"], paused.data["paused_reason"]) == ("paused", "vacation")
    resumed = await client.post(f"/identities/{made['id']}/resume")
    assert (resumed.data["status"], resumed.data["paused_reason"]) == ("active", None)
    listed = await client.get("/identities")
    assert {i["id"] for i in listed.data["items"]} == {made["id"], relayed["id"]}
    archived = await client.delete(f"/identities/{relayed['id']}")
    assert archived.data["status"] == "archived"
    assert [i["id"] for i in (await client.get("/identities")).data["items"]] == [made["id"]]

    # A campaign names identities of its own account only.
    other = client.with_key(await make_key("globex", tier="starter"))
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "globex.test", tenant="globex")
    assert_error(await other.get(f"/identities/{made['id']}"), 404, "NOT_FOUND")
    foreign = await other.post(
        "/campaigns",
        json=campaign_body(settings={"identities": [made["id"]]}, **{"from": "news@globex.test"}),
    )
    assert assert_error(foreign, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "settings.identities[0]"
    )
    free = client.with_key(await make_key("tiny", tier="free"))
    assert_error(await free.get("/identities"), 403, "TIER_REQUIRED")


async def _sequence(client: Client, identities: list[str], steps: int = 1) -> dict[str, Any]:
    body = {
        "name": f"outreach-{len(identities)}-{steps}",
        "from": "sales@acme.test",
        "settings": {"identities": identities, "track_opens": False, "track_clicks": False},
        "steps": [
            {"subject": "Hello", "content": {"text": "A first note."}},
            {"delay": {"hours": 0}, "content": {"text": "Following up."}},
        ][:steps],
    }
    made = await client.post("/sequences", json=body)
    assert made.status == 201, made.body
    return dict(made.data)


async def _enrol(client: Client, sequence: dict[str, Any], people: list[str]) -> None:
    enrolled = await client.post(
        f"/sequences/{sequence['id']}/enrollments", json={"contacts": people}
    )
    assert enrolled.status == 201, enrolled.body


async def test_two_identities_capped_at_three_a_day_send_six_across_two_processes(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    client, settings = live
    ann = await _make(client, identity("ann@acme.test", daily_cap=3))
    bob = await _make(client, identity("bob@acme.test", daily_cap=3))
    sequence = await _sequence(client, [ann["id"], bob["id"]])
    await _enrol(client, sequence, [f"p{i}@dest.test" for i in range(10)])
    # Enrolment queues each step one at once, each bound to its identity.
    bound = await pool.fetch(
        "SELECT i.public_id, count(*) FROM messages m JOIN identities i ON i.id = m.identity_id"
        " GROUP BY 1"
    )
    assert {r["public_id"]: r["count"] for r in bound} == {ann["id"]: 5, bob["id"]: 5}

    first = await start_worker(settings, owner="mta-1")
    second = await start_worker(settings, owner="mta-2")
    await wait_for(lambda: len(smtp_peer.received) >= 6, timeout=30)

    async def held() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM messages WHERE status = 'queued' AND held_reason IS NOT NULL"
            )
        )

    await wait_for(lambda: _equals(held(), 4), timeout=10)
    await asyncio.sleep(1.0)  # several more claims by both processes: nothing else goes
    assert len(smtp_peer.received) == 6
    senders = sorted(str(r.message["From"]) for r in smtp_peer.received)
    assert senders == ["Ann <ann@acme.test>"] * 3 + ["Bob <bob@acme.test>"] * 3
    owners = await pool.fetch("SELECT DISTINCT lease_owner FROM messages WHERE status = 'sent'")
    assert owners  # leases are cleared on the outcome; the sends came through the claim

    # A held message says why, and when it may go: a day after its identity's first send.
    waiting = await pool.fetchval(
        "SELECT public_id FROM messages WHERE held_reason IS NOT NULL LIMIT 1"
    )
    message = (await client.get(f"/messages/{waiting}")).data
    assert message["status"] == "queued"
    assert message["held_reason"] == "identity daily cap (3 a day) reached"
    assert message["identity_id"] in (ann["id"], bob["id"])
    due = datetime.fromisoformat(message["next_attempt_at"])
    assert due > datetime.now(UTC) + timedelta(hours=23)
    usage = (await client.get(f"/identities/{ann['id']}")).data["usage"]
    assert (usage["sent_last_day"], usage["held"]) == (3, 2)

    # The next day (the day's sends age out of the window): the other four go, two each.
    await pool.execute("UPDATE identity_sends SET sent_at = sent_at - interval '1 day'")
    await pool.execute("UPDATE messages SET next_attempt_at = now() WHERE held_reason IS NOT NULL")
    await wait_for(lambda: len(smtp_peer.received) == 10, timeout=30)
    later = sorted(str(r.message["From"]) for r in smtp_peer.received[6:])
    assert later == ["Ann <ann@acme.test>"] * 2 + ["Bob <bob@acme.test>"] * 2
    await first.stop()
    await second.stop()


async def test_a_contact_keeps_the_identity_of_its_first_step_and_gets_its_signature(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    client, settings = live
    ann = await _make(client, identity("ann@acme.test", signature={"text": "Ann at Acme"}))
    bob = await _make(client, identity("bob@acme.test", signature={"text": "Bob at Acme"}))
    sequence = await _sequence(client, [ann["id"], bob["id"]], steps=2)
    people = ["p1@dest.test", "p2@dest.test", "p3@dest.test", "p4@dest.test"]
    await _enrol(client, sequence, people)
    worker = await start_worker(settings)
    await schedule(pool)
    await wait_for(lambda: len(smtp_peer.received) == 4, timeout=20)
    first = {r.rcpt_tos[0]: r.message for r in smtp_peer.received}
    assert {str(m["From"]) for m in first.values()} == {
        "Ann <ann@acme.test>",
        "Bob <bob@acme.test>",
    }
    for message in first.values():
        name = str(message["From"]).split()[0]
        text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert text.endswith(f"-- \n{name} at Acme\n"), text

    # Bob is paused: the contacts that started with him wait for him, they do not switch.
    paused = await client.post(f"/identities/{bob['id']}/pause")
    assert paused.status == 200 and paused.data["status"] == "paused", paused.body

    async def all_sent() -> bool:
        return bool(await pool.fetchval("SELECT count(*) = 4 FROM messages WHERE status = 'sent'"))

    await wait_for(all_sent, timeout=20)
    assert (await schedule(pool)).queued == 4
    await wait_for(lambda: len(smtp_peer.received) == 6, timeout=20)
    await asyncio.sleep(0.5)
    followups = {r.rcpt_tos[0]: r.message for r in smtp_peer.received[4:]}
    assert len(smtp_peer.received) == 6
    for person, message in followups.items():
        assert str(message["From"]) == str(first[person]["From"]) == "Ann <ann@acme.test>"
    held = await pool.fetch(
        "SELECT recipient, held_reason FROM messages WHERE status = 'queued' ORDER BY recipient"
    )
    assert [r["recipient"] for r in held] == sorted(
        p for p, m in first.items() if "bob" in str(m["From"])
    )
    assert {r["held_reason"] for r in held} == {"identity paused: paused by hand"}
    await client.post(f"/identities/{bob['id']}/resume")
    await wait_for(lambda: len(smtp_peer.received) == 8, timeout=20)
    assert {str(r.message["From"]) for r in smtp_peer.received[6:]} == {"Bob <bob@acme.test>"}
    await worker.stop()


async def test_a_gap_spaces_an_identitys_sends(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    client, settings = live
    ann = await _make(client, identity("ann@acme.test", min_gap_seconds=1))
    sequence = await _sequence(client, [ann["id"]])
    await _enrol(client, sequence, ["p1@dest.test", "p2@dest.test", "p3@dest.test"])
    await schedule(pool)
    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 3, timeout=20)
    await worker.stop()
    times = [
        r["sent_at"]
        for r in await pool.fetch("SELECT sent_at FROM identity_sends ORDER BY sent_at")
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2 and min(gaps) >= 1.0, gaps


async def test_warm_up_starts_small_and_grows_only_on_healthy_days(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    client, settings = live
    ann = await _make(
        client, identity("ann@acme.test", daily_cap=10, warmup={"start": 2, "step": 3})
    )
    sequence = await _sequence(client, [ann["id"]])
    await _enrol(client, sequence, [f"p{i}@dest.test" for i in range(6)])
    await schedule(pool)
    worker = await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 2, timeout=20)
    reason = await wait_for(
        lambda: pool.fetchval("SELECT max(held_reason) FROM messages WHERE status = 'queued'"),
        timeout=10,
    )
    assert reason == "identity daily cap (2 a day) reached"
    await worker.stop()

    async def advance() -> list[asyncpg.Record]:
        return list(await pool.fetch("SELECT * FROM advance_warmups(0.1, 0.003)"))

    assert await advance() == []  # its first day is not over
    await pool.execute(
        "UPDATE identities SET created_at = created_at - interval '1 day',"
        " warmup_counted_on = current_date - 1"
    )
    [grown] = await advance()
    assert grown["day"] == 1
    assert (await client.get(f"/identities/{ann['id']}")).data["usage"]["daily_limit"] == 5
    assert await advance() == []  # once a day

    # A day with bounces over the limit does not count.
    await pool.execute("UPDATE identities SET warmup_counted_on = current_date - 1")
    await pool.execute(
        "INSERT INTO sending_stats (scope, key, bucket, type, total)"
        " SELECT 'identity', id::text, date_trunc('hour', now()), 'email.bounced', 5"
        " FROM identities"
    )
    [same] = await advance()
    assert same["day"] == 1


async def test_an_identity_that_bounces_is_paused_and_the_other_keeps_sending(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    make_settings: Callable[..., Settings],
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    client, settings = live
    bad = await _make(client, identity("ann@acme.test"))
    good = await _make(client, identity("bob@acme.test"))
    sequence = await _sequence(client, [bad["id"], good["id"]])
    # Enrolments alternate between the two identities; every fifth of Ann's bounces (20%).
    people = [f"ok{i}@dest.test" for i in range(120)]
    await _enrol(client, sequence, people)
    anns = [
        r["recipient"]
        for r in await pool.fetch(
            "SELECT m.recipient FROM messages m JOIN identities i ON i.id = m.identity_id"
            " WHERE i.public_id = $1 ORDER BY m.id",
            bad["id"],
        )
    ]
    assert len(anns) == 60
    for address in anns[::5]:
        smtp_peer.fault("RCPT", 550, "5.1.1 no such user", match=address)
    smtp_peer.fault("DATA", delay=0.05)
    # Two connections: the sends take a few seconds, so the breaker sees them as they come.
    worker = await start_worker(
        make_settings(
            mta={
                **settings.mta.model_dump(include={"routes", "breaker"}),
                "default_throttle": {"max_connections": 2},
            }
        )
    )

    async def paused() -> Any:
        got = (await client.get(f"/identities/{bad['id']}")).data
        return got if got["status"] == "paused" else None

    ann = await wait_for(paused, timeout=60)
    assert ann["paused_reason"].startswith("bounce rate ")

    async def bobs_done() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) = 60 FROM messages m JOIN identities i ON i.id = m.identity_id"
                " WHERE i.public_id = $1 AND m.status = 'sent'",
                good["id"],
            )
        )

    await wait_for(bobs_done, timeout=60)
    await worker.stop()
    assert (await client.get(f"/identities/{good['id']}")).data["status"] == "active"
    waiting = await pool.fetchval(
        "SELECT count(*) FROM messages m JOIN identities i ON i.id = m.identity_id"
        " WHERE i.public_id = $1 AND m.status = 'queued'",
        bad["id"],
    )
    assert waiting > 0
    events = [
        dict(r["data"])
        for r in await pool.fetch("SELECT data FROM events WHERE type = 'sending.paused'")
    ]
    assert [(e["scope"], e["identity_id"]) for e in events] == [("identity", bad["id"])]
    assert (await client.get("/sending/pauses")).data["items"] == []  # domain and tenant fine


async def test_a_relay_gets_the_identitys_credentials_over_verified_tls_only(
    pool: asyncpg.Pool,
    live: tuple[Client, Settings],
    make_settings: Callable[..., Settings],
    start_worker: Any,
    tmp_path: Path,
) -> None:
    import ssl

    client, settings = live
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    relay = await SMTPPeer(tls_context=context, credentials=("cy", "app-password-1")).start()
    try:
        cy = await _make(
            client,
            identity(
                "cy@gmail.example",
                relay={
                    "host": "127.0.0.1",
                    "port": relay.port,
                    "username": "cy",
                    "password": "app-password-1",
                },
            ),
        )
        sequence = await _sequence(client, [cy["id"]])
        await _enrol(client, sequence, ["p1@dest.test"])
        await schedule(pool)

        # A relay whose certificate we cannot verify never gets the password.
        worker = await start_worker(settings)
        deferred = await wait_for(
            lambda: pool.fetchrow("SELECT * FROM messages WHERE status = 'deferred'"), timeout=20
        )
        assert "TLS" in deferred["last_reply"] or "certificate" in deferred["last_reply"].lower()
        assert relay.received == []
        await worker.stop()

        trusting = make_settings(
            api={"listen": "127.0.0.1:0"},
            mta={"routes": settings.mta.routes, "tls_ca_file": str(ca_file)},
        )
        await pool.execute("UPDATE messages SET next_attempt_at = now()")
        worker = await start_worker(trusting)
        await wait_for(lambda: len(relay.received) == 1, timeout=20)
        got = relay.received[0]
        assert got.tls is True and got.rcpt_tos == ["p1@dest.test"]
        assert str(got.message["From"]) == "Cy <cy@gmail.example>"
        await worker.stop()
    finally:
        await relay.stop()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
