"""Webhook endpoint routes and the signed test ping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from api.server import ApiServer
from penguinmails.config import Settings
from tests.api.conftest import Client
from tests.api.test_envelope import assert_error
from tests.helpers import Receiver, verify


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
