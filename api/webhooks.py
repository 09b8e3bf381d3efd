"""Webhook endpoint routes, on top of penguinmails.webhooks (storage, SSRF guard, signing).

`POST /webhooks/{id}/test` sends a signed `webhook.test` ping right away and reports what the
endpoint answered (a "test" button wants the answer now, not a queued delivery). It goes
through the same address guard as real deliveries: the URL's host is resolved once, every
address checked, and the connection made only to those addresses; redirects are not followed.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import aiohttp
import orjson

from api.envelope import not_found, validation_error
from api.models import (
    Deleted,
    ListQuery,
    Page,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookDelivery,
    WebhookTestResult,
    WebhookUpdate,
)
from api.routing import API, Call, decode_cursor, encode_cursor
from penguinmails import webhooks
from penguinmails.outbound import client_session
from penguinmails.queries import load
from penguinmails.secrets import server_keys

SQL = load("api")
PING_TIMEOUT = 10.0


def _invalid(exc: webhooks.InvalidEndpoint) -> Exception:
    return validation_error([{"field": exc.field, "message": exc.message}])


def _model(endpoint: webhooks.Endpoint) -> Webhook:
    data = endpoint.to_dict()
    data.pop("tenant_id")
    return Webhook(**data)


@API.route(
    "POST",
    "/webhooks",
    summary="Register a webhook endpoint (its secret is shown once)",
    tag="Webhooks",
    body=WebhookCreate,
    response=WebhookCreated,
    status=201,
)
async def create_webhook(call: Call) -> WebhookCreated:
    body: WebhookCreate = call.body
    try:
        endpoint, secret = await webhooks.create_endpoint(
            call.pool,
            call.principal.tenant_id,
            body.url,
            body.events,
            body.secret,
            settings=call.state.settings,
            description=body.description,
        )
    except webhooks.InvalidEndpoint as exc:
        raise _invalid(exc) from None
    return WebhookCreated(**_model(endpoint).model_dump(), secret=secret)


@API.route(
    "GET", "/webhooks", summary="List webhook endpoints", tag="Webhooks", response=Page[Webhook]
)
async def list_webhooks(call: Call) -> Page[Webhook]:
    found = await webhooks.list_endpoints(call.pool, call.principal.tenant_id)
    return Page[Webhook](items=[_model(e) for e in found], has_more=False, next_cursor=None)


@API.route(
    "GET",
    "/webhooks/{id}",
    summary="Get a webhook endpoint",
    tag="Webhooks",
    response=Webhook,
    errors=(404,),
)
async def get_webhook(call: Call) -> Webhook:
    endpoint_id = call.path_id("id", "Webhook")
    endpoint = await webhooks.get_endpoint(call.pool, call.principal.tenant_id, endpoint_id)
    if endpoint is None:
        raise not_found("Webhook")
    return _model(endpoint)


@API.route(
    "PATCH",
    "/webhooks/{id}",
    summary="Change a webhook endpoint",
    tag="Webhooks",
    body=WebhookUpdate,
    response=Webhook,
    errors=(404,),
)
async def update_webhook(call: Call) -> Webhook:
    body: WebhookUpdate = call.body
    endpoint_id = call.path_id("id", "Webhook")
    try:
        async with call.pool.acquire() as conn:
            endpoint = await webhooks.update_endpoint(
                conn,
                call.principal.tenant_id,
                endpoint_id,
                settings=call.state.settings,
                url=body.url,
                events=body.events,
                description=body.description,
                active=body.active,
            )
    except webhooks.InvalidEndpoint as exc:
        raise _invalid(exc) from None
    if endpoint is None:
        raise not_found("Webhook")
    return _model(endpoint)


@API.route(
    "DELETE",
    "/webhooks/{id}",
    summary="Delete a webhook endpoint",
    tag="Webhooks",
    response=Deleted,
    errors=(404,),
)
async def delete_webhook(call: Call) -> Deleted:
    endpoint_id = call.path_id("id", "Webhook")
    if not await webhooks.delete_endpoint(call.pool, call.principal.tenant_id, endpoint_id):
        raise not_found("Webhook")
    return Deleted(id=endpoint_id)


@API.route(
    "GET",
    "/webhooks/{id}/deliveries",
    summary="Recent deliveries to an endpoint",
    tag="Webhooks",
    query=ListQuery,
    response=Page[WebhookDelivery],
    errors=(404,),
)
async def list_webhook_deliveries(call: Call) -> Page[WebhookDelivery]:
    query: ListQuery = call.query
    endpoint_id = call.path_id("id", "Webhook")
    if await webhooks.get_endpoint(call.pool, call.principal.tenant_id, endpoint_id) is None:
        raise not_found("Webhook")
    rows = await webhooks.list_deliveries(
        call.pool,
        call.principal.tenant_id,
        endpoint_id,
        limit=query.limit + 1,
        before=decode_cursor(query.cursor),
    )
    items = [WebhookDelivery(**r) for r in rows[: query.limit]]
    more = len(rows) > query.limit
    return Page[WebhookDelivery](
        items=items, has_more=more, next_cursor=encode_cursor(items[-1].id) if more else None
    )


@API.route(
    "POST",
    "/webhooks/{id}/test",
    summary="Send a signed test ping now and report the answer",
    tag="Webhooks",
    response=WebhookTestResult,
    errors=(404,),
)
async def test_webhook(call: Call) -> WebhookTestResult:
    endpoint_id = call.path_id("id", "Webhook")
    tenant = call.principal.tenant_id
    endpoint = await webhooks.get_endpoint(call.pool, tenant, endpoint_id)
    row = await call.pool.fetchrow(SQL["webhook_secrets"], tenant, endpoint_id)
    if endpoint is None or row is None:
        raise not_found("Webhook")
    keys = server_keys(call.state.settings)
    signing = [webhooks.unseal(row["secret_sealed"], keys)]
    if row["previous_valid"] and row["previous_secret_sealed"] is not None:
        signing.append(webhooks.unseal(row["previous_secret_sealed"], keys))
    ping_id = "test_" + secrets.token_hex(12)
    now = datetime.now(UTC)
    body = orjson.dumps(
        {
            "id": f"evt_{ping_id}",
            "type": "webhook.test",
            "created": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": {"webhook_id": endpoint_id, "message": "This is a test from PenguinMails."},
        }
    )
    headers = webhooks.signature_headers(ping_id, int(now.timestamp()), body, signing)
    headers["Content-Type"] = "application/json"
    allow_private = call.state.settings.webhooks.allow_private_targets
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        webhooks.check_url(endpoint.url, allow_private=allow_private)
        async with client_session(
            allow_private=allow_private, limit=1, timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT)
        ) as session:
            async with session.post(
                endpoint.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                await response.read()
    except webhooks.UnsafeTarget as exc:
        error = f"refused: {exc}"
    except TimeoutError:
        error = f"no answer within {PING_TIMEOUT:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        error = str(exc) or type(exc).__name__
    return WebhookTestResult(
        delivered=status is not None and 200 <= status < 300,
        status_code=status,
        error=error,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        webhook_id=ping_id,
    )
