"""API keys, users and login: `penguinmails keys create` and the /api-keys, /users, /auth routes.

A key is shown once, when it is created; afterwards only its prefix is ever shown. A
revoked key fails at its next request (keys are looked up on every request, never cached).

Keys and users belong to one mode, like every tenant-owned object: a test key makes test
keys and test users, and a test user's login token acts in test mode. A live principal may
make a test key (it goes to the account's test twin); a test principal can make nothing live.
"""

from __future__ import annotations

import logging

import asyncpg

from api.auth import HashBusy, Kind, Mode, hash_password, new_key, verify_password
from api.errors import ApiError, forbidden, not_found, unauthorized
from api.models import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ListQuery,
    LoggedOut,
    LoginRequest,
    Page,
    PasswordChange,
    Token,
    User,
    UserCreate,
)
from api.ratelimit import source_network
from api.routing import API, Call, decode_cursor, keyset_page
from api.tiers import TIERS
from penguinmails.messages import ensure_tenant, mode_tenant
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("api")

_TYPES: dict[str, Kind] = {"secret": "sk", "publishable": "pk"}
_TYPE_NAMES: dict[str, str] = {**{v: k for k, v in _TYPES.items()}, "oauth": "oauth"}


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
    mode: Mode = "test" if test else "live"
    async with conn.transaction():
        account_id = await ensure_tenant(conn, tenant, tier)
        if tier is not None:
            await conn.execute(SQL["set_tier"], account_id, tier)
        tenant_id = await mode_tenant(conn, account_id, mode)
        key, _ = await insert_key(conn, tenant_id, "sk", mode, "cli")
    return key


def _key_model(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        type=_TYPE_NAMES[row["kind"]],  # type: ignore[arg-type]
        mode=row["mode"],
        livemode=row["mode"] == "live",
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        client=row["client"],
        scope=row["scope"],
        last_used_at=row["last_used_at"],
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
async def create_api_key(call: Call[ApiKeyCreate, None]) -> ApiKeyCreated:
    body = call.body
    mode: Mode = body.mode or call.principal.mode
    if call.principal.sandbox and mode == "live":
        raise forbidden("A test-mode key cannot create live keys")
    tenant_id = call.principal.tenant_id
    if mode != call.principal.mode:
        tenant_id = await mode_tenant(call.pool, call.principal.account_id, mode)
    key, row = await insert_key(call.pool, tenant_id, _TYPES[body.type], mode, body.name)
    return ApiKeyCreated(**_key_model(row).model_dump(), key=key)


@API.route(
    "GET",
    "/api-keys",
    summary="List API keys (prefixes only), newest first",
    tag="Keys",
    query=ListQuery,
    response=Page[ApiKey],
)
async def list_api_keys(call: Call[None, ListQuery]) -> Page[ApiKey]:
    query = call.query
    after = decode_cursor(query.cursor, numeric=False)
    rows = await call.pool.fetch(
        SQL["list_api_keys"], call.principal.tenant_id, after, query.limit + 1
    )
    return keyset_page(Page[ApiKey], rows, query.limit, _key_model)


@API.route(
    "DELETE",
    "/api-keys/{id}",
    summary="Revoke an API key",
    tag="Keys",
    response=ApiKey,
    errors=(404,),
)
async def revoke_api_key(call: Call[None, None]) -> ApiKey:
    key_id = call.path_id("key", "API key")
    row = await call.pool.fetchrow(SQL["revoke_api_key"], call.principal.tenant_id, key_id)
    if row is None:
        raise not_found("API key")
    log.info(
        "api key revoked",
        extra={"action": "key_revoke", "tenant": call.principal.tenant_id, "prefix": row["prefix"]},
    )
    return _key_model(row)


def _too_busy() -> ApiError:
    return ApiError(
        503,
        "SERVICE_UNAVAILABLE",
        "Too many logins are being checked right now; retry in a second",
        headers={"Retry-After": "1"},
    )


@API.route(
    "POST",
    "/users",
    summary="Create a user who can log in (in the caller's mode)",
    tag="Auth",
    body=UserCreate,
    response=User,
    status=201,
    errors=(409, 503),
)
async def create_user(call: Call[UserCreate, None]) -> User:
    body = call.body
    try:
        encoded = await hash_password(body.password)
    except HashBusy:
        raise _too_busy() from None
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
    "GET",
    "/users",
    summary="List the users of this mode, newest first",
    tag="Auth",
    query=ListQuery,
    response=Page[User],
)
async def list_users(call: Call[None, ListQuery]) -> Page[User]:
    query = call.query
    after = decode_cursor(query.cursor, numeric=False)
    rows = await call.pool.fetch(
        SQL["list_users"], call.principal.tenant_id, after, query.limit + 1
    )
    return keyset_page(Page[User], rows, query.limit, lambda r: User(**dict(r)))


@API.route(
    "DELETE",
    "/users/{id}",
    summary="Delete a user; every token of theirs stops working at once",
    tag="Auth",
    response=User,
    errors=(404,),
)
async def delete_user(call: Call[None, None]) -> User:
    user_id = call.path_id("user", "User")
    row = await call.pool.fetchrow(SQL["delete_user"], call.principal.tenant_id, user_id)
    if row is None:
        raise not_found("User")
    log.info(
        "user deleted",
        extra={"action": "user_delete", "tenant": call.principal.tenant_id, "user": user_id},
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
    errors=(409, 429, 503),
)
async def login(call: Call[LoginRequest, None]) -> Token:
    body = call.body
    throttle = call.state.limiter.logins
    network = source_network(call.request.remote)
    await throttle.check(body.email, network)
    mode = None if body.livemode is None else ("live" if body.livemode else "test")
    rows = await call.pool.fetch(SQL["login_candidates"], body.email, body.tenant, mode)
    try:
        if not rows:  # the same work as a wrong password, so timing tells nothing
            await verify_password(None, body.password)
        matches = [r for r in rows if await verify_password(r["password_hash"], body.password)]
    except HashBusy:
        raise _too_busy() from None
    if not matches:
        await throttle.failed(body.email, network)
        # The account and network, never the password: enough to see an attack in the log.
        log.warning(
            "login failed",
            extra={"action": "login_failed", "account": body.email.lower(), "network": network},
        )
        raise unauthorized("Invalid email or password")
    if len(matches) > 1:
        raise ApiError(
            409,
            "CONFLICT",
            "This address and password open several accounts; name the tenant and mode",
            [
                {"field": "tenant", "message": "required: the tenant to log in to"},
                {"field": "livemode", "message": "required: true for live, false for test"},
            ],
        )
    row = matches[0]
    await throttle.succeeded(body.email)
    signer = call.state.signer
    token = signer.issue(
        row["id"], row["tenant_id"], row["mode"], row["token_version"], body.expires_in
    )
    return Token(access_token=token, expires_in=signer.lifetime(body.expires_in))


def _user_id(call: Call) -> int:
    if call.principal.user_id is None:
        raise forbidden("Only a logged-in user's token can do this, not an API key")
    return call.principal.user_id


@API.route(
    "POST",
    "/auth/logout",
    summary="Log out everywhere: every token of the calling user stops working",
    tag="Auth",
    response=LoggedOut,
)
async def logout(call: Call[None, None]) -> LoggedOut:
    user_id = _user_id(call)
    await call.pool.fetchval(SQL["bump_token_version"], user_id)
    log.info("logged out everywhere", extra={"action": "logout", "user": user_id})
    return LoggedOut()


@API.route(
    "POST",
    "/auth/password",
    summary="Change the calling user's password; every other token stops working",
    tag="Auth",
    body=PasswordChange,
    response=Token,
    errors=(503,),
)
async def change_password(call: Call[PasswordChange, None]) -> Token:
    body = call.body
    user_id = _user_id(call)
    row = await call.pool.fetchrow(SQL["user_password"], user_id)
    try:
        ok = row is not None and await verify_password(row["password_hash"], body.current_password)
        encoded = await hash_password(body.new_password) if ok else ""
    except HashBusy:
        raise _too_busy() from None
    if row is None or not ok:
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            "current_password: does not match",
            [{"field": "current_password", "message": "does not match"}],
        )
    version = await call.pool.fetchval(SQL["set_password"], user_id, encoded)
    log.info("password changed", extra={"action": "password_change", "user": user_id})
    signer = call.state.signer
    token = signer.issue(user_id, call.principal.tenant_id, call.principal.mode, version)
    return Token(access_token=token, expires_in=signer.lifetime(None))
