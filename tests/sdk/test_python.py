"""penguinmails_client (sdk/python) against a real API server: the documentation's examples
(test data, the testing framework, the retry loop on a real 429, a send with tracking, a real
webhook delivery verified) with the sync client (in a thread, so this loop keeps serving) and
the async one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from penguinmails_client import (
    AsyncPenguinMails,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PenguinMails,
    PenguinMailsError,
    PermissionDeniedError,
    RateLimitError,
    ValidationError,
    verify_webhook_signature,
)

from api.server import ApiServer
from tests.helpers import Receiver


def recipients(count: int) -> list[dict[str, Any]]:
    return [
        {
            "email": f"test{i}@example.com",
            "personalization": {"name": f"Test User {i}", "company": f"Test Company {i}"},
        }
        for i in range(count)
    ]


def generate_test_campaigns(client: PenguinMails, count: int = 5) -> list[Any]:
    """The documentation's Test Data Generator, camelCase settings included."""
    return [
        client.campaigns.create(
            {
                "name": f"Test Campaign {i + 1}",
                "subject": f"Test Subject {i + 1}",
                "content": {
                    "html": f"<h1>Test Email {i + 1}</h1><p>This is test content.</p>",
                    "text": f"Test Email {i + 1} - This is test content.",
                },
                "recipients": recipients(50),
                "settings": {
                    "analyticsEnabled": True,
                    "aiOptimization": True,
                    "trackOpens": True,
                    "trackClicks": True,
                },
            }
        )
        for i in range(count)
    ]


async def test_sync_client_runs_the_documented_examples(api: ApiServer, key: str) -> None:
    client = PenguinMails(api_key=key, base_url=api.url)

    campaigns = await asyncio.to_thread(generate_test_campaigns, client)
    assert [c["name"] for c in campaigns] == [f"Test Campaign {i}" for i in range(1, 6)]
    for campaign in campaigns:
        assert campaign["recipient_count"] == 50
        assert campaign["settings"]["ai_optimization"] is True  # false unless the key arrived

    created = await asyncio.to_thread(
        client.campaigns.create,
        {
            "name": "Test Campaign",
            "subject": "Test Subject",
            "content": {"html": "<h1>Test</h1>", "text": "Test"},
            "recipients": [{"email": "test@example.com"}],
        },
    )
    assert created["id"].startswith("campaign_")
    assert (created["name"], created["status"]) == ("Test Campaign", "draft")

    with pytest.raises(ValidationError) as invalid:
        await asyncio.to_thread(
            client.campaigns.create,
            {"name": "", "subject": "Test Subject", "content": "<h1>Test</h1>", "recipients": []},
        )
    assert invalid.value.status == 422 and invalid.value.code == "VALIDATION_ERROR"
    assert invalid.value.request_id and invalid.value.request_id.startswith("req_")
    assert "name" in [d["field"] for d in invalid.value.details]

    sent = await asyncio.to_thread(
        client.emails.send,
        {
            "to": "user@example.com",
            "subject": "Test Email",
            "content": "<p>Hello from PenguinMails!</p>",
            "tracking": {"trackOpens": True, "track_clicks": True},
        },
    )
    assert sent["message_id"].startswith("msg_") and sent["status"] == "queued"
    message = await asyncio.to_thread(client.messages.get, sent["message_id"])
    assert message["id"] == sent["message_id"]

    # Pagination, and custom_fields' own keys kept as given.
    for i in range(3):
        await asyncio.to_thread(
            client.contacts.create,
            {"email": f"p{i}@example.com", "firstName": "Ann", "customFields": {"planName": i}},
        )
    page = await asyncio.to_thread(client.contacts.list, limit=2)
    assert len(page["items"]) == 2 and page["has_more"] is True
    everyone = await asyncio.to_thread(lambda: list(client.contacts.iterate(limit=2)))
    assert len(everyone) == 3 and {c["first_name"] for c in everyone} == {"Ann"}
    assert sorted(c["custom_fields"]["planName"] for c in everyone) == [0, 1, 2]

    with pytest.raises(NotFoundError):
        await asyncio.to_thread(client.campaigns.get, "campaign_nope")
    cancelled = await asyncio.to_thread(client.campaigns.cancel, created["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(ConflictError):
        await asyncio.to_thread(client.campaigns.pause, created["id"])
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(
            PenguinMails(api_key="sk_test_nope", base_url=api.url).campaigns.list
        )


async def test_sync_idempotent_sends_and_network_errors(api: ApiServer, key: str) -> None:
    client = PenguinMails(api_key=key, base_url=api.url)
    email = {"to": "once@example.com", "subject": "Once", "content": "<p>once</p>"}
    first = await asyncio.to_thread(client.emails.send, email, idempotency_key="py-once")
    again = await asyncio.to_thread(client.emails.send, email, idempotency_key="py-once")
    other = await asyncio.to_thread(client.emails.send, email)
    assert again["message_id"] == first["message_id"] != other["message_id"]

    down = PenguinMails(api_key=key, base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(PenguinMailsError) as failed:
        await asyncio.to_thread(down.campaigns.list)
    assert failed.value.status == 0 and failed.value.code == "NETWORK_ERROR"


async def test_the_retry_loop_meets_a_real_429(
    start_api: Callable[..., Awaitable[ApiServer]], make_key: Callable[..., Awaitable[str]]
) -> None:
    """The documentation's error-handling loop, in Python, against a two-second window."""
    server = await start_api(limits={"free": 1}, window=2)
    key = await make_key("throttled", tier="free", test=True)
    async with AsyncPenguinMails(api_key=key, base_url=server.url, max_retries=0) as probe:
        limited: RateLimitError | None = None
        for _ in range(50):
            try:
                await probe.campaigns.list()
            except RateLimitError as error:
                limited = error
                break
    assert limited is not None and limited.status == 429 and limited.code == "RATE_LIMITED"
    assert limited.retry_after is not None and 0 < limited.retry_after <= 2

    waits: list[float] = []
    async with AsyncPenguinMails(api_key=key, base_url=server.url) as client:
        campaign = None
        for attempt in range(5):
            try:
                campaign = await client.campaigns.create(
                    {"name": "Retried", "subject": "Hi", "content": "<p>Hi</p>"}
                )
                break
            except RateLimitError as error:
                wait = error.retry_after or 2**attempt
                waits.append(wait)
                await asyncio.sleep(wait)
        assert campaign is not None and campaign["name"] == "Retried"
        assert waits, "the loop never met the 429 it is written for"
        # A read is retried after Retry-After by the client itself.
        for _ in range(50):
            try:
                await probe_once(key, server.url)
            except RateLimitError:
                break
        started = time.monotonic()
        page = await client.campaigns.list()
        assert "Retried" in [c["name"] for c in page["items"]]
        assert time.monotonic() - started < 10


async def probe_once(key: str, url: str) -> None:
    async with AsyncPenguinMails(api_key=key, base_url=url, max_retries=0) as probe:
        await probe.campaigns.list()


async def test_async_client_and_a_real_webhook_delivery(
    api: ApiServer, key: str, receiver: Receiver
) -> None:
    async with AsyncPenguinMails(api_key=key, base_url=api.url) as client:
        hook = await client.webhooks.create({"url": receiver.url(), "events": ["email.*"]})
        assert hook["secret"].startswith("whsec_")
        result = await client.webhooks.test(hook["id"])
        assert result["delivered"] is True
        [request] = receiver.requests
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = request.body
        assert verify_webhook_signature(body, headers, hook["secret"])
        simple = headers["x-penguinmails-signature"]
        assert verify_webhook_signature(body.decode(), simple, hook["secret"])
        assert not verify_webhook_signature(body + b" ", headers, hook["secret"])
        assert not verify_webhook_signature(body + b" ", simple, hook["secret"])
        stale = int(headers["webhook-timestamp"]) + 3600
        assert not verify_webhook_signature(body, headers, hook["secret"], now=stale)

        campaign = await client.campaigns.create(
            {"name": "Async", "subject": "Hi", "content": {"html": "<p>Hi</p>"}}
        )
        assert campaign["status"] == "draft"
        assert [c["id"] async for c in client.campaigns.iterate(limit=1)] == [campaign["id"]]
        analytics = await client.analytics.campaign(campaign["id"], period="7d")
        assert analytics["campaign_id"] == campaign["id"]

        sequence = await client.request(
            "POST",
            "/sequences",
            {"name": "Onboarding", "steps": [{"subject": "Hi", "content": "<p>Hi</p>"}]},
        )
        contact = await client.contacts.create({"email": "seq@example.com"})
        enrolled = await client.campaigns.trigger_sequence(contact["id"], sequence["id"])
        assert (enrolled["contact_id"], enrolled["sequence_id"]) == (contact["id"], sequence["id"])

        publishable = await client.request("POST", "/api-keys", {"type": "publishable"})
    async with AsyncPenguinMails(api_key=publishable["key"], base_url=api.url) as browser:
        assert (await browser.campaigns.list())["items"]
        with pytest.raises(PermissionDeniedError):
            await browser.campaigns.create({"name": "x", "content": "<p>x</p>"})


class Flaky:
    """A real HTTP hop in front of the API that answers 503 to the first `failures` requests
    and forwards the rest, recording each request's method and Idempotency-Key."""

    def __init__(self, upstream: str, http: aiohttp.ClientSession) -> None:
        self.upstream, self.http = upstream, http
        self.failures = 0
        self.seen: list[tuple[str, str | None]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Flaky:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.headers.get("Idempotency-Key")))
        if self.failures > 0:
            self.failures -= 1
            return web.json_response({}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self.http.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as answer:
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type="application/json")


async def test_sync_retries_5xx_only_where_repeating_is_safe(
    api: ApiServer, key: str, http: aiohttp.ClientSession
) -> None:
    flaky = await Flaky(api.url, http).start()
    try:
        client = PenguinMails(api_key=key, base_url=flaky.url, retry_delay=0.01)
        flaky.failures = 2
        email = {"to": "retry@example.com", "subject": "R", "content": "<p>r</p>"}
        sent = await asyncio.to_thread(client.emails.send, email)
        assert sent["message_id"].startswith("msg_")
        assert len(flaky.seen) == 3 and len({k for _, k in flaky.seen}) == 1
        assert flaky.seen[0][1]  # a generated key, the same on every retry

        flaky.seen.clear()
        flaky.failures = 1
        with pytest.raises(PenguinMailsError) as failed:
            await asyncio.to_thread(
                client.campaigns.create, {"name": "x", "subject": "x", "content": "<p>x</p>"}
            )
        assert failed.value.status == 503 and len(flaky.seen) == 1  # a keyless POST: once

        flaky.seen.clear()
        flaky.failures = 5
        bounded = PenguinMails(api_key=key, base_url=flaky.url, retry_delay=0.01, max_retries=1)
        with pytest.raises(PenguinMailsError):
            await asyncio.to_thread(bounded.campaigns.list)
        assert len(flaky.seen) == 2
    finally:
        assert flaky.runner is not None
        await flaky.runner.cleanup()
