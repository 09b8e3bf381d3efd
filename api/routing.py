"""Operations: each route declares its models once, for validation, dispatch and OpenAPI.

A route module registers its handlers on `API` with the request body, query and response
models; `dispatch` wraps each handler with what every request goes through, in this order:
authenticate (401), check the caller may use the route (403: publishable keys only reach
routes declared `publishable`; 403 TIER_REQUIRED below the route's plan tier), count against
the rate limit of the caller's tenant, mode and bucket (429; headers on every answer), read
and validate the query and the JSON body (400/413/415/422), call the handler, wrap its result
in the envelope.

Two options for the routes a browser on another site calls (the conversion a landing page
reports): `anonymous` also serves a request without an Authorization header (the handler
gets no principal and authorizes it itself), and `cors` answers the CORS preflight and puts
`Access-Control-Allow-Origin: *` on every answer of that operation, errors included.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.auth import LoginTokens, Principal, authenticate, scope_refusal
from api.envelope import EXTRA_HEADERS, nul_free, pydantic_details, read_json, success
from api.errors import ApiError, forbidden, not_found, validation_error
from api.models import LIVEMODE
from api.ratelimit import RateLimiter, rate_limited
from api.tiers import Tier, at_least, tier_required
from penguinmails.config import Settings
from penguinmails.tokens import LinkSigner

MAX_ID = 2**63 - 1
_PUBLIC_ID = re.compile(r"[a-z]+_[0-9a-f]{32}")


@dataclass
class State:
    pool: asyncpg.Pool
    settings: Settings
    signer: LoginTokens
    limiter: RateLimiter
    link_signer: LinkSigner  # the tracker's link tokens' signer: conversion tokens come back here
    # Where read-only searches and analytics run: `[database] replica_url`'s pool, else `pool`.
    reader: asyncpg.Pool | None = None


STATE = web.AppKey("api_state", State)


BodyT = TypeVar("BodyT")
QueryT = TypeVar("QueryT")


@dataclass
class Call(Generic[BodyT, QueryT]):
    """What a handler gets: the request, the caller, and the validated inputs, typed by the
    models the route declares (`Call[CampaignCreate, None]`: a body, no query)."""

    request: web.Request
    state: State
    principal_or_none: Principal | None
    body: BodyT
    query: QueryT
    response_headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # overrides the operation's status (e.g. 200 on a replay)

    @property
    def principal(self) -> Principal:
        assert self.principal_or_none is not None, "operation declared without auth"
        return self.principal_or_none

    @property
    def pool(self) -> asyncpg.Pool:
        return self.state.pool

    @property
    def reader(self) -> asyncpg.Pool:
        """The replica when one is configured (else the primary), for the read-only searches
        and analytics that may lag by the replication delay; never for the queue."""
        return self.state.reader or self.state.pool

    def path_id(self, prefix: str, what: str, name: str = "id") -> str:
        """The public id in the path, if it has the shape of one of `prefix`'s ids; anything
        else (an integer key, another kind's id) is simply not found."""
        raw = self.request.match_info[name]
        if not is_public_id(raw, prefix):
            raise not_found(what)
        return raw


def is_public_id(value: str, prefix: str) -> bool:
    """`campaign_` + 32 lowercase hex digits: migration 0013's public_id()."""
    return _PUBLIC_ID.fullmatch(value) is not None and value.startswith(prefix + "_")


Handler = Callable[[Call[Any, Any]], Awaitable[BaseModel | None]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None
    body_optional: bool
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    publishable: bool  # a publishable (browser) key may call it
    anonymous: bool  # may also be called without credentials (then call.principal_or_none is None)
    cors: bool  # any origin may call it from a browser
    headers: tuple[str, ...]  # request headers worth documenting (Idempotency-Key)
    errors: tuple[int, ...]
    tier: Tier  # the lowest plan tier that includes it (api.tiers)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class Registry:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        body: type[BaseModel] | None = None,
        body_optional: bool = False,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = True,
        publishable: bool = False,
        anonymous: bool = False,
        cors: bool = False,
        headers: tuple[str, ...] = (),
        errors: tuple[int, ...] = (),
        tier: Tier = "free",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method,
                    path=path,
                    handler=handler,
                    summary=summary,
                    tag=tag,
                    body=body,
                    body_optional=body_optional,
                    query=query,
                    response=response,
                    status=status,
                    auth=auth,
                    publishable=publishable,
                    anonymous=anonymous,
                    cors=cors,
                    headers=headers,
                    errors=errors,
                    tier=tier,
                )
            )
            return handler

        return register


API = Registry()


def dispatch(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        principal = None
        if operation.auth and not (operation.anonymous and "Authorization" not in request.headers):
            principal = await authenticate(request, state.pool, state.signer)
            # Refused before it is counted: a request the caller may not make spends nothing.
            if principal.publishable and not operation.publishable:
                raise forbidden(
                    "Publishable (pk_) keys may only read campaigns and analytics; use a secret key"
                )
            refusal = scope_refusal(principal, operation.method, operation.tag)
            if refusal is not None:
                raise ApiError(
                    403,
                    "INSUFFICIENT_SCOPE",
                    f"This OAuth token {refusal}",
                    [{"field": "scope", "message": refusal}],
                )
            if not at_least(principal.tier, operation.tier):
                raise tier_required(operation.tier, principal.tier, operation.summary)
            usage = await state.limiter.hit(
                principal.tenant_id,
                principal.tier,
                bucket=principal.rate_bucket,
                test=principal.sandbox,
            )
            request[EXTRA_HEADERS].update(usage.headers())
            if usage.exceeded:
                raise rate_limited(usage)
            LIVEMODE.set(principal.livemode)
        for name, value in (*request.match_info.items(), *request.query.items()):
            nul_free(value, name)
        query = None
        if operation.query is not None:
            try:
                query = operation.query.model_validate(dict(request.query))
            except ValidationError as exc:
                raise validation_error(pydantic_details(exc)) from None
        body = None
        if operation.body is not None:
            raw = await read_json(request, optional=operation.body_optional)
            if not isinstance(raw, dict):
                raise validation_error([{"field": "body", "message": "must be a JSON object"}])
            try:
                body = operation.body.model_validate(raw)
            except ValidationError as exc:
                raise validation_error(pydantic_details(exc)) from None
        call = Call(request, state, principal, body, query)
        result = await operation.handler(call)
        return success(
            request, result, call.status or operation.status, headers=call.response_headers
        )

    return _cors(handle) if operation.cors else handle


# Credential-free requests only: Authorization is not an allowed header, so a browser on
# another site never sends a key here (and a page cannot be made to spend one).
CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT_MAX_AGE = 86400


def _cors(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:  # the envelope middleware writes it, with these headers
            exc.headers.update(CORS_HEADERS)
            raise
        response.headers.update(CORS_HEADERS)
        return response

    return handle


def _preflight(methods: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def preflight(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=204,
            headers={
                **CORS_HEADERS,
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
            },
        )

    return preflight


def install(app: web.Application, prefix: str = "/api/v1") -> None:
    cors: dict[str, list[str]] = {}
    for operation in API.operations:
        app.router.add_route(operation.method, prefix + operation.path, dispatch(operation))
        if operation.cors:
            cors.setdefault(operation.path, []).append(operation.method)
    for path, methods in cors.items():
        app.router.add_route("OPTIONS", prefix + path, _preflight(methods))


# ---------------------------------------------------------------------------------------------
# Cursors: opaque to clients, so the ordering key can change without breaking them.


PageT = TypeVar("PageT", bound=BaseModel)
Row = TypeVar("Row")
Item = TypeVar("Item")


def keyset_page(
    page: type[PageT],
    rows: Sequence[Row],
    limit: int,
    item: Callable[[Row], Item],
    cursor: Callable[[Row, Item], str] | None = None,
) -> PageT:
    """One page of a keyset query that fetched `limit + 1` rows: the extra row only says
    there is a next page. The cursor is the last item's id unless `cursor` derives it (from
    the last row and its item)."""
    shown = rows[:limit]
    items = [item(r) for r in shown]
    more = len(rows) > limit
    next_cursor = None
    if more:
        last: Any = items[-1]
        next_cursor = cursor(shown[-1], last) if cursor else encode_cursor(last.id)
    return page(items=items, has_more=more, next_cursor=next_cursor)


def encode_cursor(value: int | str) -> str:
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, numeric: bool = True) -> Any:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or "\x00" in value:
            raise ValueError(cursor)
        if numeric:
            number = int(value)
            if not 0 < number <= MAX_ID:
                raise ValueError(cursor)
            return number
        return value
    except ValueError:
        raise validation_error([{"field": "cursor", "message": "invalid cursor"}]) from None
