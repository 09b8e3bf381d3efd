"""The response envelope, request ids, and the middleware that turns every failure into it.

Success: `{"success": true, "data": ..., "meta": {"request_id", "timestamp"}}`.
Failure: `{"success": false, "error": {"code", "message", "details": [{"field", "message"}],
"request_id"}}`. Whatever goes wrong (a route that does not exist, malformed JSON, a body too
large, a bug) the client gets this shape and a request id to quote; a stack trace goes to the
server's log under that id, never to the client.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, validation_error

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
# Headers to put on whatever response the request gets (the rate-limit headers).
EXTRA_HEADERS = web.RequestKey("extra_headers", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def field_path(loc: Sequence[int | str]) -> str:
    """pydantic's location as a path a client can read: `recipients[3].email`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def pydantic_details(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    details = []
    for item in exc.errors(include_url=False, include_input=False):
        loc = [p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = field_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        details.append({"field": path, "message": message})
    return details


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def success(
    request: web.Request,
    data: BaseModel | Mapping[str, Any] | None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    body = {
        "success": True,
        "data": payload,
        "meta": {"request_id": request[REQUEST_ID], "timestamp": now_iso()},
    }
    return web.Response(
        body=_dumps(body), status=status, content_type="application/json", headers=headers
    )


def failure(request_id: str, error: ApiError) -> web.Response:
    body = {
        "success": False,
        "error": {
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "request_id": request_id,
        },
    }
    return web.Response(
        body=_dumps(body),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


# aiohttp raises these for requests that never reach a handler.
_HTTP_CODES = {
    400: ("BAD_REQUEST", "The request could not be understood"),
    401: ("UNAUTHORIZED", "Authentication required"),
    403: ("FORBIDDEN", "Not allowed"),
    404: ("NOT_FOUND", "No such resource"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed on this resource"),
    413: ("PAYLOAD_TOO_LARGE", "Request body too large"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"),
}


# The database refusing work (read-only, full, shutting down, unreachable): 503, not 500.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
)


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    request[EXTRA_HEADERS] = {}
    try:
        response = await handler(request)
    except ApiError as exc:
        response = failure(request_id, exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect a handler chose to raise
            raise
        code, message = _HTTP_CODES.get(exc.status, ("HTTP_ERROR", exc.reason))
        if exc.status == 413:
            message = f"Request body too large (at most {request.app[MAX_BODY]} bytes)"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = failure(request_id, ApiError(exc.status, code, message, headers=headers))
    except DATABASE_UNAVAILABLE as exc:
        # Nothing was committed, so nothing may be called accepted: the client should retry.
        log.warning(
            "database unavailable",
            extra={"action": "api_unavailable", "request_id": request_id, "error": repr(exc)},
        )
        response = failure(
            request_id,
            ApiError(
                503,
                "SERVICE_UNAVAILABLE",
                "The database cannot take this request right now; nothing was changed. Retry.",
                headers={"Retry-After": "5"},
            ),
        )
    except Exception:
        log.exception(
            "unhandled error",
            extra={
                "action": "api_error",
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
            },
        )
        response = failure(
            request_id,
            ApiError(500, "INTERNAL_ERROR", "An internal error occurred; quote the request id"),
        )
    response.headers["X-Request-Id"] = request_id
    for name, value in request[EXTRA_HEADERS].items():
        response.headers[name] = value
    return response


MAX_BODY = web.AppKey("max_body", int)


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The JSON body; errors (wrong type, too large, malformed) as ApiErrors."""
    if not request.can_read_body:
        if optional:
            return {}
        raise ApiError(400, "INVALID_JSON", "A JSON request body is required")
    if request.content_type != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if not raw.strip() and optional:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "INVALID_JSON", f"Malformed JSON: {exc.msg}") from None
    problem = _json_problem(body)
    if problem is not None:
        where, message = problem
        raise validation_error([{"field": where or "body", "message": message}])
    return body


# No request body needs more nesting than this; deeper ones are refused before anything walks
# them recursively (pydantic, the template engine, the jsonb encoder).
MAX_JSON_DEPTH = 32


def _json_problem(body: Any) -> tuple[str, str] | None:
    """(path, message) for the first string or key holding U+0000 (Postgres text and jsonb
    cannot hold it: refused here, by name, not as a 500) or the first value nested past
    MAX_JSON_DEPTH; else None. Iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path, f"nested more than {MAX_JSON_DEPTH} levels"
        if isinstance(value, str):
            if "\x00" in value:
                return path, "must not contain NUL"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                inner = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    return inner, "must not contain NUL"
                stack.append((item, inner, depth + 1))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((value[index], f"{path}[{index}]", depth + 1))
    return None


def nul_free(value: str, field_name: str) -> str:
    """A path or query parameter, refused by name when it holds U+0000."""
    if "\x00" in value:
        raise validation_error([{"field": field_name, "message": "must not contain NUL"}])
    return value
