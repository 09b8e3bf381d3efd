"""Webhook endpoint routes, on top of penguinmails.webhooks (storage, SSRF guard, signing).

`POST /webhooks/{id}/test` sends a signed `webhook.test` ping right away and reports what the
endpoint answered (a "test" button wants the answer now, not a queued delivery). It is sent
by the same `post_signed` as real deliveries, so through the same address guard: the URL's
host is resolved once, every address checked, and the connection made only to those
addresses; redirects are not followed.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import aiohttp
import orjson

from api.errors import conflict, not_found, validation_error
from api.models import (
    Deleted,
    ListQuery,
    Page,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookDelivery,
    WebhookDeliveryQuery,
    WebhookRotate,
    WebhookSecretRotated,
    WebhookTestResult,
    WebhookUpdate,
)
from api.routing import API, Call, decode_cursor, encode_cursor, keyset_page
from penguinmails.queries import load
from penguinmails.secrets import server_keys
from penguinmails.webhooks import InvalidEndpoint, endpoints
from penguinmails.webhooks.guard import client_session
from penguinmails.webhooks.post import post_signed
from penguinmails.webhooks.signing import signing_secrets

SQL = load("api")
PING_TIMEOUT = 10.0


def _invalid(exc: InvalidEndpoint) -> Exception:
    return validation_error([{"field": exc.field, "message": exc.message}])


def _model(endpoint: endpoints.Endpoint) -> Webhook:
    return Webhook(**endpoint.model_dump())


@API.route(
    "POST",
    "/webhooks",
    summary="Register a webhook endpoint (its secret is shown once)",
    tag="Webhooks",
    tier="professional",
    body=WebhookCreate,
    response=WebhookCreated,
    status=201,
)
async def create_webhook(call: Call[WebhookCreate, None]) -> WebhookCreated:
    body = call.body
    try:
        endpoint, secret = await endpoints.create_endpoint(
            call.pool,
            call.principal.tenant_id,
            body.url,
            body.events,
            body.secret,
            settings=call.state.settings,
            description=body.description,
        )
    except InvalidEndpoint as exc:
        raise _invalid(exc) from None
    return WebhookCreated(**_model(endpoint).model_dump(), secret=secret)


@API.route(
    "GET",
    "/webhooks",
    summary="List webhook endpoints",
    tag="Webhooks",
    tier="professional",
    query=ListQuery,
    response=Page[Webhook],
)
async def list_webhooks(call: Call[None, ListQuery]) -> Page[Webhook]:
    query = call.query
    found = await endpoints.list_endpoints(
        call.pool,
        call.principal.tenant_id,
        limit=query.limit + 1,
        after=decode_cursor(query.cursor, numeric=False),
    )
    return keyset_page(Page[Webhook], found, query.limit, _model)


@API.route(
    "GET",
    "/webhooks/{id}",
    summary="Get a webhook endpoint",
    tag="Webhooks",
    tier="professional",
    response=Webhook,
    errors=(404,),
)
async def get_webhook(call: Call[None, None]) -> Webhook:
    endpoint_id = call.path_id("wh", "Webhook")
    endpoint = await endpoints.get_endpoint(call.pool, call.principal.tenant_id, endpoint_id)
    if endpoint is None:
        raise not_found("Webhook")
    return _model(endpoint)


@API.route(
    "PATCH",
    "/webhooks/{id}",
    summary="Change a webhook endpoint",
    tag="Webhooks",
    tier="professional",
    body=WebhookUpdate,
    response=Webhook,
    errors=(404,),
)
async def update_webhook(call: Call[WebhookUpdate, None]) -> Webhook:
    body = call.body
    endpoint_id = call.path_id("wh", "Webhook")
    try:
        async with call.pool.acquire() as conn:
            endpoint = await endpoints.update_endpoint(
                conn,
                call.principal.tenant_id,
                endpoint_id,
                settings=call.state.settings,
                url=body.url,
                events=body.events,
                description=body.description,
                active=body.active,
            )
    except InvalidEndpoint as exc:
        raise _invalid(exc) from None
    if endpoint is None:
        raise not_found("Webhook")
    return _model(endpoint)


async def _set_active(call: Call[None, None], active: bool) -> Webhook:
    endpoint_id = call.path_id("wh", "Webhook")
    async with call.pool.acquire() as conn:
        endpoint = await endpoints.update_endpoint(
            conn, call.principal.tenant_id, endpoint_id, settings=call.state.settings, active=active
        )
    if endpoint is None:
        raise not_found("Webhook")
    return _model(endpoint)


# PATCH {"active": ...} does the same; these say what they do in a log line or a button's
# handler, and enabling is what the disabled-endpoint notice tells an owner to do.
@API.route(
    "POST",
    "/webhooks/{id}/enable",
    summary="Re-enable an endpoint; its failure record is cleared",
    tag="Webhooks",
    tier="professional",
    response=Webhook,
    errors=(404,),
)
async def enable_webhook(call: Call[None, None]) -> Webhook:
    return await _set_active(call, True)


@API.route(
    "POST",
    "/webhooks/{id}/disable",
    summary="Disable an endpoint; its pending deliveries are cancelled",
    tag="Webhooks",
    tier="professional",
    response=Webhook,
    errors=(404,),
)
async def disable_webhook(call: Call[None, None]) -> Webhook:
    return await _set_active(call, False)


@API.route(
    "POST",
    "/webhooks/{id}/rotate-secret",
    summary="Give an endpoint a new secret (shown once); the old one signs too for a while",
    tag="Webhooks",
    tier="professional",
    body=WebhookRotate,
    body_optional=True,
    response=WebhookSecretRotated,
    errors=(404,),
)
async def rotate_webhook_secret(call: Call[WebhookRotate, None]) -> WebhookSecretRotated:
    body = call.body
    endpoint_id = call.path_id("wh", "Webhook")
    try:
        done = await endpoints.rotate(
            call.pool,
            call.principal.tenant_id,
            endpoint_id,
            settings=call.state.settings,
            secret=body.secret,
            overlap_seconds=body.overlap_seconds,
        )
    except InvalidEndpoint as exc:
        raise _invalid(exc) from None
    if done is None:
        raise not_found("Webhook")
    return WebhookSecretRotated(
        **_model(done.endpoint).model_dump(),
        secret=done.secret,
        previous_secret_expires_at=done.previous_secret_expires_at,
    )


@API.route(
    "DELETE",
    "/webhooks/{id}",
    summary="Delete a webhook endpoint",
    tag="Webhooks",
    tier="professional",
    response=Deleted,
    errors=(404,),
)
async def delete_webhook(call: Call[None, None]) -> Deleted:
    endpoint_id = call.path_id("wh", "Webhook")
    if not await endpoints.delete_endpoint(call.pool, call.principal.tenant_id, endpoint_id):
        raise not_found("Webhook")
    return Deleted(id=endpoint_id)


@API.route(
    "GET",
    "/webhooks/{id}/deliveries",
    summary="Recent deliveries to an endpoint, newest first, optionally of one status",
    tag="Webhooks",
    tier="professional",
    query=WebhookDeliveryQuery,
    response=Page[WebhookDelivery],
    errors=(404,),
)
async def list_webhook_deliveries(
    call: Call[None, WebhookDeliveryQuery],
) -> Page[WebhookDelivery]:
    query = call.query
    endpoint_id = call.path_id("wh", "Webhook")
    if await endpoints.get_endpoint(call.pool, call.principal.tenant_id, endpoint_id) is None:
        raise not_found("Webhook")
    rows = await endpoints.list_deliveries(
        call.pool,
        call.principal.tenant_id,
        endpoint_id,
        limit=query.limit + 1,
        before=decode_cursor(query.cursor),
        status=query.status,
    )
    return keyset_page(
        Page[WebhookDelivery],
        rows,
        query.limit,
        lambda r: WebhookDelivery(**{k: v for k, v in r.items() if k != "pk"}),
        lambda row, _item: encode_cursor(row["pk"]),
    )


@API.route(
    "POST",
    "/webhooks/{id}/deliveries/{delivery_id}/retry",
    summary="Deliver a failed or cancelled delivery again now (one more attempt)",
    tag="Webhooks",
    tier="professional",
    response=WebhookDelivery,
    errors=(404, 409),
)
async def retry_webhook_delivery(call: Call[None, None]) -> WebhookDelivery:
    endpoint_id = call.path_id("wh", "Webhook")
    delivery_id = call.path_id("whd", "Webhook delivery", name="delivery_id")
    row = await endpoints.retry_delivery(
        call.pool, call.principal.tenant_id, endpoint_id, delivery_id
    )
    if row is None:
        raise not_found("Webhook delivery")
    if not row["retried"]:
        if not row["active"]:
            raise conflict("The endpoint is disabled: enable it first")
        raise conflict(
            f"Only a failed or cancelled delivery is retried; this one is {row['status']}"
        )
    fields = set(WebhookDelivery.model_fields) - {"livemode"}
    return WebhookDelivery(**{k: row[k] for k in fields})


@API.route(
    "POST",
    "/webhooks/{id}/test",
    summary="Send a signed test ping now and report the answer",
    tag="Webhooks",
    tier="professional",
    response=WebhookTestResult,
    errors=(404,),
)
async def test_webhook(call: Call[None, None]) -> WebhookTestResult:
    endpoint_id = call.path_id("wh", "Webhook")
    tenant = call.principal.tenant_id
    endpoint = await endpoints.get_endpoint(call.pool, tenant, endpoint_id)
    row = await call.pool.fetchrow(SQL["webhook_secrets"], tenant, endpoint_id)
    if endpoint is None or row is None:
        raise not_found("Webhook")
    previous = row["previous_secret_sealed"] if row["previous_valid"] else None
    signing = signing_secrets(row["secret_sealed"], previous, server_keys(call.state.settings))
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
    allow_private = call.state.settings.webhooks.allow_private_targets
    started = time.monotonic()
    async with client_session(allow_private=allow_private, limit=1) as session:
        answer = await post_signed(
            session,
            endpoint.url,
            body,
            webhook_id=ping_id,
            secrets=signing,
            allow_private=allow_private,
            timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT),
        )
    return WebhookTestResult(
        delivered=answer.ok,
        status_code=answer.status_code,
        error=f"no answer within {PING_TIMEOUT:g}s" if answer.timed_out else answer.error,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        webhook_id=ping_id,
    )
