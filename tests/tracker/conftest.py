"""Fixtures for the tracker: sent messages to hit and a running tracker.

Everything is real: the tracker serves over loopback on port 0; the webhook receiver it
delivers to (the `receiver` fixture, tests/helpers.py's Receiver) is an aiohttp server that
can be made to refuse connections, answer errors or stall, then recover.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from penguinmails.config import Settings
from penguinmails.links import Links
from penguinmails.messages import Draft, enqueue, ensure_tenant
from penguinmails.secrets import server_keys
from penguinmails.tokens import LinkSigner
from tracker.server import Tracker


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
    )


@pytest.fixture
def links(settings: Settings) -> Links:
    return Links(LinkSigner(server_keys(settings)), settings.tracker.base_url)


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> int:
    return await ensure_tenant(pool, "acme")


@pytest.fixture
def make_campaign(pool: asyncpg.Pool, tenant: int) -> Callable[..., Awaitable[tuple[int, str]]]:
    """A campaign row, as the API makes one: (its key, its public id)."""

    async def make(name: str = "Spring launch", status: str = "sending") -> tuple[int, str]:
        row = await pool.fetchrow(
            "INSERT INTO campaigns (tenant_id, name, subject, status, started_at)"
            " VALUES ($1, $2, 'Hi', $3, now()) RETURNING id, public_id",
            tenant,
            name,
            status,
        )
        return row["id"], row["public_id"]

    return make


@pytest.fixture
def sent_messages(pool: asyncpg.Pool, tenant: int) -> Callable[..., Awaitable[list[int]]]:
    """Queue messages and mark them sent an hour ago (so hits are not 'too soon')."""

    async def make(
        count: int = 1,
        *,
        tenant_id: int | None = None,
        campaign_id: int | None = 7,
        sent_seconds_ago: float = 3600.0,
    ) -> list[int]:
        recipients = [f"reader{i}@dest.test" for i in range(count)]
        draft = Draft(
            from_email="news@acme.test",
            subject="Hi",
            recipients=recipients,
            html="<p>Hi</p>",
            campaign_id=campaign_id,
        )
        ids = await enqueue(pool, tenant_id or tenant, draft)
        await pool.execute(
            "UPDATE messages SET status = 'sent', sent_at = now() - make_interval(secs => $2)"
            " WHERE id = ANY($1)",
            ids,
            sent_seconds_ago,
        )
        # Each test writes the events it is about: the queueing's own email.sent (with its
        # webhook fan-out, by cascade, and its count in the rollup) would be noise in the
        # counts and deliveries these tests check.
        await pool.execute(
            "WITH gone AS ("
            "    DELETE FROM events WHERE message_id = ANY($1) AND type = 'email.sent'"
            "    RETURNING campaign_id, date_trunc('hour', created_at, 'UTC') AS bucket,"
            "              is_unique, is_machine"
            "), counted AS ("
            "    SELECT campaign_id, bucket, count(*) AS n,"
            "           count(*) FILTER (WHERE is_unique) AS u,"
            "           count(*) FILTER (WHERE NOT is_machine) AS h,"
            "           count(*) FILTER (WHERE is_unique AND NOT is_machine) AS hu"
            "    FROM gone WHERE campaign_id IS NOT NULL GROUP BY 1, 2"
            ")"
            " UPDATE campaign_stats s SET total = s.total - c.n, uniq = s.uniq - c.u,"
            "     human = s.human - c.h, human_unique = s.human_unique - c.hu"
            " FROM counted c"
            " WHERE s.campaign_id = c.campaign_id AND s.bucket = c.bucket"
            "   AND s.type = 'email.sent'",
            ids,
        )
        await pool.execute("DELETE FROM campaign_stats WHERE total = 0")
        return ids

    return make


@pytest.fixture
async def start_tracker(
    pool: asyncpg.Pool, settings: Settings
) -> AsyncIterator[Callable[..., Awaitable[Tracker]]]:
    started: list[Tracker] = []

    async def start(custom: Settings | None = None, **options: Any) -> Tracker:
        options.setdefault("dispatcher", {"poll_interval": 0.05})
        tracker = await Tracker(pool, custom or settings, **options).start()
        started.append(tracker)
        return tracker

    yield start
    for tracker in started:
        await tracker.close()
