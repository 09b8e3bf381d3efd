"""API keys, users and login: `penguinmails keys create` and the /api-keys, /users, /auth routes.

A key is shown once, when it is created; afterwards only its prefix is ever shown. A
revoked key fails at its next request (keys are looked up on every request, never cached).
"""

from __future__ import annotations

import logging

import asyncpg

from api.auth import Kind, Mode, hash_password, new_key, unauthorized, verify_password
from api.envelope import ApiError, not_found
from api.models import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    LoginRequest,
    Page,
    Token,
    User,
    UserCreate,
)
from api.routing import API, Call
from penguinmails.messages import ensure_tenant
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("api")

_TYPES: dict[str, Kind] = {"secret": "sk", "publishable": "pk"}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}
TIERS = ("free", "starter", "professional", "enterprise")


async def insert_key(
    conn: asyncpg.Connection | asyncpg.Pool, tenant_id: int, kind: Kind, mode: Mode, name: str = ""
) -> tuple[str, asyncpg.Record]:
    key, prefix, digest = new_key(kind, mode)
    row = await conn.fetchrow(SQL["insert_api_key"], tenant_id, prefix, digest, kind, mode, name)
    assert row is not None
    log.info(
        "api key created",
        extra={"action": "key_create", "tenant": tenant_id, "prefix": prefix, "mode": mode},
    )
    return key, row


async def create_key(
    conn: asyncpg.Connection, *, tenant: str, tier: str | None = None, test: bool = False
) -> str:
    """For the CLI: a secret key for `tenant` (created if needed); returns the full key.

    `tier` None keeps an existing tenant's tier (a new tenant starts on free); a tier given
    for an existing tenant changes it.
    """
    if tier is not None and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")
    async with conn.transaction():
        tenant_id = await ensure_tenant(conn, tenant, tier)
        if tier is not None:
            await conn.execute("UPDATE tenants SET tier = $2 WHERE id = $1", tenant_id, tier)
        key, _ = await insert_key(conn, tenant_id, "sk", "test" if test else "live", "cli")
    return key


def _key_model(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        type=_TYPE_NAMES[row["kind"]],  # type: ignore[arg-type]
        mode=row["mode"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


@API.route(
    "POST",
    "/api-keys",
    summary="Create an API key (shown once)",
    tag="Keys",
    body=ApiKeyCreate,
    response=ApiKeyCreated,
    status=201,
)
async def create_api_key(call: Call) -> ApiKeyCreated:
    body: ApiKeyCreate = call.body
    mode: Mode = body.mode or call.principal.mode
    if call.principal.sandbox and mode == "live":
        raise ApiError(403, "FORBIDDEN", "A test-mode key cannot create live keys")
    key, row = await insert_key(
        call.pool, call.principal.tenant_id, _TYPES[body.type], mode, body.name
    )
    return ApiKeyCreated(**_key_model(row).model_dump(), key=key)


@API.route(
    "GET",
    "/api-keys",
    summary="List API keys (prefixes only)",
    tag="Keys",
    response=Page[ApiKey],
)
async def list_api_keys(call: Call) -> Page[ApiKey]:
    rows = await call.pool.fetch(SQL["list_api_keys"], call.principal.tenant_id)
    return Page[ApiKey](items=[_key_model(r) for r in rows], has_more=False, next_cursor=None)


@API.route(
    "DELETE",
    "/api-keys/{id}",
    summary="Revoke an API key",
    tag="Keys",
    response=ApiKey,
    errors=(404,),
)
async def revoke_api_key(call: Call) -> ApiKey:
    key_id = call.path_id("id", "API key")
    row = await call.pool.fetchrow(SQL["revoke_api_key"], call.principal.tenant_id, key_id)
    if row is None:
        raise not_found("API key")
    log.info(
        "api key revoked",
        extra={"action": "key_revoke", "tenant": call.principal.tenant_id, "prefix": row["prefix"]},
    )
    return _key_model(row)


@API.route(
    "POST",
    "/users",
    summary="Create a user who can log in",
    tag="Auth",
    body=UserCreate,
    response=User,
    status=201,
    errors=(409,),
)
async def create_user(call: Call) -> User:
    body: UserCreate = call.body
    encoded = await hash_password(body.password)
    row = await call.pool.fetchrow(
        SQL["insert_user"], call.principal.tenant_id, body.email, encoded
    )
    if row is None:
        raise ApiError(
            409,
            "CONFLICT",
            "A user with this email already exists",
            [{"field": "email", "message": "already registered"}],
        )
    return User(**dict(row))


@API.route(
    "POST",
    "/auth/login",
    summary="Exchange email and password for a short-lived token",
    tag="Auth",
    body=LoginRequest,
    response=Token,
    auth=False,
)
async def login(call: Call) -> Token:
    body: LoginRequest = call.body
    row = await call.pool.fetchrow(SQL["user_by_email"], body.email)
    ok = await verify_password(row["password_hash"] if row else None, body.password)
    if not ok or row is None:
        log.info("login failed", extra={"action": "login_failed"})
        raise unauthorized("Invalid email or password")
    token = call.state.signer.issue(row["id"], row["tenant_id"])
    return Token(access_token=token, expires_in=call.state.signer.ttl)
