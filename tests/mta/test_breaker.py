"""The circuit breaker through the API, a running worker and a peer that bounces: a campaign
whose bounce rate passes the limit is paused with its reason and `sending.paused`, its
waiting messages stay unsent, another campaign keeps going, and resuming clears it."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg

from api.keys import create_key
from api.server import ApiServer
from mta.domains import add_domain
from tests.helpers import Client, campaign_body, wait_for
from tests.smtp_peer import SMTPPeer


async def test_a_campaign_that_bounces_too_much_is_paused_and_the_other_goes_on(
    pool: asyncpg.Pool,
    make_settings: Any,
    smtp_peer: SMTPPeer,
    start_worker: Any,
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings(
        api={"listen": "127.0.0.1:0"},
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "default_throttle": {"max_connections": 2},
            "breaker": {"min_sample": 10, "max_bounce_rate": 0.1, "check_interval": 0.1},
        },
    )
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="acme", tier="starter")
        await add_domain(conn, settings, "acme.test", tenant="acme")
    smtp_peer.fault("RCPT", 550, "5.1.1 no such user", match="bad")
    smtp_peer.fault("DATA", delay=0.02)  # slow enough that the breaker sees it mid-way
    async with ApiServer(pool, settings) as api:
        client = Client(http, api.url + "/api/v1", key)

        async def campaign(name: str, bad_every: int) -> str:
            recipients = [
                {
                    "email": f"{'bad' if bad_every and i % bad_every == 0 else 'ok'}{i}.{name}"
                    "@dest.test",
                    "personalization": {"first_name": "Sam"},
                }
                for i in range(150)
            ]
            made = await client.post(
                "/campaigns",
                json=campaign_body(name=name, recipients=recipients, **{"from": "news@acme.test"}),
            )
            assert made.status == 201, made.body
            sent = await client.post(f"/campaigns/{made.data['id']}/send")
            assert sent.status in (200, 202), sent.body
            return str(made.data["id"])

        bouncing = await campaign("bouncing", 5)  # 20% bounce
        clean = await campaign("clean", 0)
        worker = await start_worker(settings)

        async def status(campaign_id: str) -> Any:
            return (await client.get(f"/campaigns/{campaign_id}")).data

        paused = await wait_for(
            lambda: _when(status(bouncing), lambda c: c["status"] == "paused"), timeout=60
        )
        assert paused["paused_reason"].startswith("bounce rate ")
        assert "(limit 10.00%)" in paused["paused_reason"]
        await wait_for(
            lambda: _when(status(clean), lambda c: c["status"] == "completed"), timeout=60
        )
        waiting = await pool.fetchval(
            "SELECT count(*) FROM messages m JOIN campaigns c ON c.id = m.campaign_id"
            " WHERE c.public_id = $1 AND m.status = 'paused'",
            bouncing,
        )
        assert waiting > 0  # held back, not sent
        [event] = await pool.fetch("SELECT data FROM events WHERE type = 'sending.paused'")
        assert event["data"]["scope"] == "campaign" and event["data"]["bounce_rate"] > 0.1

        resumed = await client.post(f"/campaigns/{bouncing}/resume")
        assert resumed.status == 200 and resumed.data["paused_reason"] is None
        await worker.stop()


async def _when(value: Any, test: Any) -> Any:
    got = await value
    return got if test(got) else None
