"""Webhook endpoint routes and the signed test ping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.server import ApiServer
from penguinmails.config import Settings
from tests.api.conftest import Client
from tests.api.test_envelope import assert_error
from tests.helpers import Receiver, verify, wait_for
from tracker.server import Tracker


async def test_create_list_get_update_delete(client: Client, receiver: Receiver) -> None:
    reply = await client.post(
        "/webhooks", json={"url": receiver.url(), "events": ["email.*", "campaign.completed"]}
    )
    assert reply.status == 201
    hook = reply.data
    assert hook["secret"].startswith("whsec_") and hook["events"] == [
        "email.*",
        "campaign.completed",
    ]
    listed = (await client.get("/webhooks")).data["items"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    got = (await client.get(f"/webhooks/{hook['id']}")).data
    assert "secret" not in got
    changed = (await client.patch(f"/webhooks/{hook['id']}", json={"active": False})).data
    assert changed["active"] is False
    assert (await client.get(f"/webhooks/{hook['id']}/deliveries")).data["items"] == []
    assert (await client.delete(f"/webhooks/{hook['id']}")).data["deleted"] is True
    assert_error(await client.get(f"/webhooks/{hook['id']}"), 404, "NOT_FOUND")
    assert_error(await client.delete(f"/webhooks/{hook['id']}"), 404, "NOT_FOUND")


async def test_validation(client: Client) -> None:
    cases = {
        "url": {"url": "ftp://example.com/hook"},
        "events[0]": {"url": "https://example.com/hook", "events": ["Not An Event"]},
        "secret": {"url": "https://example.com/hook", "secret": "short"},
    }
    for field, body in cases.items():
        error = assert_error(await client.post("/webhooks", json=body), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field


async def test_private_targets_refused_when_not_allowed(
    start_api: Callable[..., Awaitable[ApiServer]],
    http: Any,
    key: str,
    make_settings: Callable[..., Settings],
) -> None:
    server = await start_api(make_settings(api={"listen": "127.0.0.1:0"}))
    strict = Client(http, server.url + "/api/v1", key)
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://localhost/x"):
        error = assert_error(
            await strict.post("/webhooks", json={"url": url}), 422, "VALIDATION_ERROR"
        )
        assert error["details"][0]["field"] == "url" and "refused" in error["details"][0]["message"]
        # The refusal names the setting that allows such targets.
        assert "[webhooks] allow_private_targets" in error["details"][0]["message"]


async def test_signed_test_ping(client: Client, receiver: Receiver) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    result = (await client.post(f"/webhooks/{hook['id']}/test")).data
    assert result["delivered"] is True and result["status_code"] == 200 and result["error"] is None
    [request] = receiver.requests
    payload = verify(hook["secret"], request)
    assert payload["type"] == "webhook.test" and payload["data"]["webhook_id"] == hook["id"]
    assert request.webhook_id == result["webhook_id"]

    receiver.status = 500
    failed = (await client.post(f"/webhooks/{hook['id']}/test")).data
    assert failed["delivered"] is False and failed["status_code"] == 500
    await receiver.down()
    down = (await client.post(f"/webhooks/{hook['id']}/test")).data
    assert down["delivered"] is False and down["status_code"] is None and down["error"]
    assert_error(await client.post("/webhooks/777/test"), 404, "NOT_FOUND")


async def test_other_tenants_cannot_see_endpoints(
    client: Client, receiver: Receiver, make_key: Any
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    rival = client.with_key(await make_key("rival", tier="professional", test=True))
    assert_error(await rival.get(f"/webhooks/{hook['id']}"), 404, "NOT_FOUND")
    assert_error(await rival.post(f"/webhooks/{hook['id']}/test"), 404, "NOT_FOUND")
    assert (await rival.get("/webhooks")).data["items"] == []


# -- with the real tracker delivering ---------------------------------------------------------


@pytest.fixture
async def start_tracker(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[[], Awaitable[Tracker]]]:
    """The tracker whose dispatcher delivers what the API's endpoints subscribe to (the same
    server keys as the API's settings, so it unseals the secrets the API sealed)."""
    started: list[Tracker] = []
    settings = make_settings(
        tracker={"listen": "127.0.0.1:0", "base_url": "http://tracker.test"},
        webhooks={"allow_private_targets": True},
    )

    async def start() -> Tracker:
        tracker = await Tracker(pool, settings, dispatcher={"poll_interval": 0.05}).start()
        started.append(tracker)
        return tracker

    yield start
    for tracker in started:
        await tracker.close()


async def add_event(pool: asyncpg.Pool, tenant_id: int, kind: str = "campaign.completed") -> None:
    """An event as the roles record one; its webhook deliveries are written with it."""
    await pool.execute(
        "INSERT INTO events (tenant_id, type, data) VALUES ($1, $2, '{}')", tenant_id, kind
    )


def signs(secret: str, request: Any) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_rotating_a_secret_signs_with_both_for_the_overlap_then_only_the_new(
    client: Client, receiver: Receiver, pool: asyncpg.Pool, tenant_id: int, start_tracker: Any
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    old = hook["secret"]
    overlap = 3
    reply = await client.post(
        f"/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": overlap}
    )
    assert reply.status == 200, reply.body
    rotated = reply.data
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old and rotated["id"] == hook["id"]
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"].replace("Z", "+00:00"))
    # The new secret is shown this once: nothing else the API answers carries it.
    assert "secret" not in (await client.get(f"/webhooks/{hook['id']}")).data
    assert all("secret" not in h for h in (await client.get("/webhooks")).data["items"])

    await start_tracker()
    await add_event(pool, tenant_id)
    await wait_for(lambda: len(receiver.accepted()) == 1)
    during = receiver.accepted()[0]
    sent_at = int(during.headers["webhook-timestamp"])
    assert sent_at < until.timestamp(), "delivered after the overlap: too slow to tell"
    assert len(during.headers["webhook-signature"].split()) == 2
    assert signs(old, during) and signs(new, during)
    verify(new, during)  # the seed's header follows the current secret

    # The test ping, sent by the API itself, signs the same way during the overlap.
    assert (await client.post(f"/webhooks/{hook['id']}/test")).data["delivered"] is True
    ping = receiver.requests[-1]
    assert signs(old, ping) and signs(new, ping)

    await asyncio.sleep(max(0.0, until.timestamp() - datetime.now(until.tzinfo).timestamp()) + 0.2)
    await add_event(pool, tenant_id)
    await wait_for(lambda: len(receiver.accepted()) == 3)
    after = receiver.accepted()[-1]
    assert len(after.headers["webhook-signature"].split()) == 1
    assert signs(new, after) and not signs(old, after)
    verify(new, after)


async def test_rotating_with_a_chosen_secret_and_no_overlap(
    client: Client, receiver: Receiver
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    chosen = "a-secret-we-chose-ourselves"
    rotated = (
        await client.post(
            f"/webhooks/{hook['id']}/rotate-secret",
            json={"secret": chosen, "overlap_seconds": 0},
        )
    ).data
    assert rotated["secret"] == chosen
    assert (await client.post(f"/webhooks/{hook['id']}/test")).data["delivered"] is True
    [ping] = receiver.requests
    assert len(ping.headers["webhook-signature"].split()) == 1  # the old one retired at once
    verify(chosen, ping)
    # No body at all: a generated secret and the documented 24 hours.
    default = await client.post(f"/webhooks/{hook['id']}/rotate-secret")
    assert default.status == 200, default.body
    created = datetime.fromisoformat(default.data["updated_at"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(
        default.data["previous_secret_expires_at"].replace("Z", "+00:00")
    )
    assert abs((until - created).total_seconds() - 86400) < 60
    assert default.data["secret"].startswith("whsec_")


async def test_rotation_refuses_bad_input(client: Client, receiver: Receiver) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    path = f"/webhooks/{hook['id']}/rotate-secret"
    for body, field in (
        ({"overlap_seconds": -1}, "overlap_seconds"),
        ({"overlap_seconds": 8 * 86400}, "overlap_seconds"),
        ({"overlap_seconds": "soon"}, "overlap_seconds"),
        ({"secret": "short"}, "secret"),
        ({"secrets": "typo"}, "secrets"),
    ):
        error = assert_error(await client.post(path, json=body), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (body, error)
    assert_error(await client.post("/webhooks/wh_nope/rotate-secret"), 404, "NOT_FOUND")
    # The secret that was refused did not replace the one in use.
    assert (await client.post(f"/webhooks/{hook['id']}/test")).data["delivered"] is True
    verify(hook["secret"], receiver.requests[-1])


async def test_reenabling_a_disabled_endpoint_clears_its_failure_record(
    client: Client, receiver: Receiver, pool: asyncpg.Pool, tenant_id: int, start_tracker: Any
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    receiver.status = 410  # "this endpoint is gone": the dispatcher disables it
    await start_tracker()
    await add_event(pool, tenant_id)

    async def disabled() -> bool:
        return (await client.get(f"/webhooks/{hook['id']}")).data["active"] is False

    await wait_for(disabled)
    gone = (await client.get(f"/webhooks/{hook['id']}")).data
    assert gone["disabled_at"] is not None and "410" in gone["disabled_reason"]
    assert gone["failing_since"] is not None

    receiver.status = 200
    enabled = await client.post(f"/webhooks/{hook['id']}/enable")
    assert enabled.status == 200, enabled.body
    assert enabled.data["active"] is True
    assert enabled.data["disabled_at"] is enabled.data["disabled_reason"] is None
    assert enabled.data["failing_since"] is None
    assert (await client.get(f"/webhooks/{hook['id']}")).data == enabled.data
    # Delivering again: the next event reaches the repaired endpoint.
    before = len(receiver.accepted())
    await add_event(pool, tenant_id)
    await wait_for(lambda: len(receiver.accepted()) == before + 1)

    disabled_again = (await client.post(f"/webhooks/{hook['id']}/disable")).data
    assert disabled_again["active"] is False
    for verb in ("enable", "disable"):
        assert_error(await client.post(f"/webhooks/wh_nope/{verb}"), 404, "NOT_FOUND")


async def test_the_delivery_log_filters_by_status_and_still_pages(
    client: Client, receiver: Receiver, pool: asyncpg.Pool, tenant_id: int, start_tracker: Any
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    log = f"/webhooks/{hook['id']}/deliveries"
    tracker = await start_tracker()
    await add_event(pool, tenant_id)
    await wait_for(lambda: len(receiver.accepted()) == 1)

    async def delivered_logged() -> bool:
        items = (await client.get(log, params={"status": "delivered"})).data["items"]
        return len(items) == 1

    await wait_for(delivered_logged)
    await tracker.close()  # what follows stays pending: nobody delivers it
    for _ in range(3):
        await add_event(pool, tenant_id)

    async def statuses(**params: str) -> list[str]:
        return [d["status"] for d in (await client.get(log, params=params)).data["items"]]

    assert await statuses() == ["pending"] * 3 + ["delivered"]
    assert await statuses(status="delivered") == ["delivered"]
    assert await statuses(status="failed") == []
    first = (await client.get(log, params={"status": "pending", "limit": "2"})).data
    assert [d["status"] for d in first["items"]] == ["pending"] * 2 and first["has_more"]
    rest = (
        await client.get(
            log, params={"status": "pending", "limit": "2", "cursor": first["next_cursor"]}
        )
    ).data
    assert [d["status"] for d in rest["items"]] == ["pending"] and not rest["has_more"]
    ids = [d["id"] for d in first["items"] + rest["items"]]
    assert len(set(ids)) == 3

    # Disabling cancels the backlog, which the log then shows under its own status.
    await client.post(f"/webhooks/{hook['id']}/disable")
    assert await statuses(status="cancelled") == ["cancelled"] * 3
    assert await statuses(status="pending") == []

    error = assert_error(await client.get(log, params={"status": "lost"}), 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "status"


async def test_a_failed_delivery_is_retried_by_hand_once_its_endpoint_is_active(
    client: Client,
    receiver: Receiver,
    pool: asyncpg.Pool,
    tenant_id: int,
    start_tracker: Any,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    log = f"/webhooks/{hook['id']}/deliveries"
    receiver.status = 410  # gone: the delivery fails for good and the endpoint is disabled
    await start_tracker()
    await add_event(pool, tenant_id)

    async def failed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await client.get(log, params={"status": "failed"})).data[
            "items"
        ]
        return items

    await wait_for(failed)
    [delivery] = await failed()
    retry = f"{log}/{delivery['id']}/retry"
    error = assert_error(await client.post(retry), 409, "CONFLICT")
    assert "disabled" in error["message"]
    assert [d["status"] for d in (await client.get(log)).data["items"]] == ["failed"]

    receiver.status = 200
    assert (await client.post(f"/webhooks/{hook['id']}/enable")).status == 200
    retried = await client.post(retry)
    assert retried.status == 200, retried.body
    assert retried.data["id"] == delivery["id"] and retried.data["status"] == "pending"
    assert retried.data["attempts"] == delivery["attempts"]  # counted on, not reset
    # The dispatcher sends the same event again, signed, and the log says delivered.
    await wait_for(lambda: len(receiver.accepted()) == 1)
    [request] = receiver.accepted()
    assert orjson.loads(request.body)["id"] == delivery["event_id"]

    async def delivered() -> bool:
        items = (await client.get(log)).data["items"]
        return [d["status"] for d in items] == ["delivered"]

    await wait_for(delivered)
    error = assert_error(await client.post(retry), 409, "CONFLICT")
    assert "this one is delivered" in error["message"]
    assert_error(await client.post(f"{log}/whd_{'0' * 32}/retry"), 404, "NOT_FOUND")
    assert_error(await client.post(f"{log}/{delivery['id'][:-1]}/retry"), 404, "NOT_FOUND")
    # Another tenant cannot name it, and a starter key has no retry.
    other = client.with_key(await make_key("globex", tier="enterprise", test=True))
    assert_error(await other.post(retry), 404, "NOT_FOUND")
    starter = client.with_key(await make_key("small", tier="starter", test=True))
    assert (await starter.post(retry)).status == 403


async def test_endpoints_are_listed_a_page_at_a_time(
    client: Client, receiver: Receiver, make_key: Any
) -> None:
    made = [
        (await client.post("/webhooks", json={"url": receiver.url(f"/hook/{i}")})).data["id"]
        for i in range(5)
    ]
    rival = client.with_key(await make_key("rival", tier="professional", test=True))
    await rival.post("/webhooks", json={"url": receiver.url()})
    seen: list[str] = []
    params = {"limit": "2"}
    sizes = []
    while True:
        page = (await client.get("/webhooks", params=params)).data
        sizes.append(len(page["items"]))
        seen += [h["id"] for h in page["items"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params = {"limit": "2", "cursor": page["next_cursor"]}
    assert sizes == [2, 2, 1]
    # By public id, newest first (ids sort by creation time; two made in one millisecond
    # sort by their random part), each once, none of the rival's.
    assert seen == sorted(made, reverse=True) and set(seen) == set(made)
    assert [h["id"] for h in (await client.get("/webhooks")).data["items"]] == seen
    for params, field in (({"limit": "0"}, "limit"), ({"cursor": "%%%"}, "cursor")):
        error = assert_error(await client.get("/webhooks", params=params), 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field


async def test_the_new_webhook_routes_are_professional(
    client: Client, receiver: Receiver, make_key: Any
) -> None:
    hook = (await client.post("/webhooks", json={"url": receiver.url()})).data
    starter = client.with_key(await make_key("smallco", tier="starter", test=True))
    for path in ("rotate-secret", "enable", "disable"):
        refused = await starter.post(f"/webhooks/{hook['id']}/{path}")
        assert "professional" in assert_error(refused, 403, "TIER_REQUIRED")["message"]
    refused = await starter.get(f"/webhooks/{hook['id']}/deliveries", params={"status": "failed"})
    assert_error(refused, 403, "TIER_REQUIRED")
