"""What the sync and async clients share: the request an operation makes, the answer's
envelope unwrapped or raised as an error, and when (and how long) to wait before a retry."""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from penguinmails_client._generated import OPERATIONS, USER_DATA_FIELDS
from penguinmails_client.errors import PenguinMailsError, RateLimitError, error_for

DEFAULT_BASE_URL = "http://127.0.0.1:8080"  # the API's default listen address
_PARAM = re.compile(r"{(\w+)}")
_UPPER = re.compile(r"[A-Z]")


def api_root(base_url: str | None) -> str:
    """The server's origin (/api/v1 is added) or the API's root itself (ending in /v1)."""
    url = (base_url or os.environ.get("PENGUINMAILS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    return url if url.endswith("/v1") else url + "/api/v1"


def snake_case(key: str) -> str:
    return _UPPER.sub(lambda m: "_" + m.group(0).lower(), key)


def to_api(value: Any) -> Any:
    """The SDK's own keys in the API's snake_case names (camelCase accepted); the keys inside
    your data (custom_fields, personalization, metadata, headers) are sent as given."""
    if isinstance(value, list | tuple):
        return [to_api(item) for item in value]
    if not isinstance(value, Mapping):
        return value
    out = {}
    for key, item in value.items():
        name = snake_case(key) if isinstance(key, str) else key
        out[name] = item if name in USER_DATA_FIELDS else to_api(item)
    return out


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    retryable: bool  # safe to repeat: a read or delete, or a request with an idempotency key


@dataclass(frozen=True)
class Options:
    api_key: str
    root: str
    max_retries: int = 2
    retry_delay: float = 0.5  # seconds, doubled each retry, with jitter
    max_retry_delay: float = 30.0
    timeout: float = 30.0


def build(
    options: Options,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    idempotency_key: str | None = None,
) -> Request:
    url = options.root + path
    pairs = {k: _text(v) for k, v in to_api(dict(query or {})).items() if v is not None}
    if pairs:
        url += "?" + urlencode(pairs)
    headers = {"Authorization": f"Bearer {options.api_key}", "Accept": "application/json"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(to_api(body)).encode()
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    retryable = method in ("GET", "HEAD", "PUT", "DELETE") or bool(idempotency_key)
    return Request(method, url, headers, data, retryable)


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def operation(
    options: Options,
    op_id: str,
    params: Mapping[str, str] | None = None,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    idempotency_key: str | None = None,
) -> Request:
    op = OPERATIONS[op_id]

    def fill(match: re.Match[str]) -> str:
        value = (params or {}).get(match.group(1))
        if not value:
            raise PenguinMailsError(
                f"{match.group(1)} is required", code="VALIDATION_ERROR", status=0
            )
        return quote(str(value), safe="")

    path = _PARAM.sub(fill, op["path"])
    if op["idempotency_key"] and idempotency_key is None:
        idempotency_key = str(uuid.uuid4())
    return build(
        options,
        op["method"],
        path,
        query=query,
        body=body,
        idempotency_key=idempotency_key if op["idempotency_key"] else None,
    )


def answer(status: int, headers: Mapping[str, str], raw: bytes) -> Any:
    """The `data` of a success envelope; else raises the error the answer is."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    if status >= 400 or (isinstance(parsed, dict) and parsed.get("success") is False):
        raise error_for(status, parsed, lowered)
    if not isinstance(parsed, dict) or "data" not in parsed:
        raise PenguinMailsError(
            f"unexpected answer (HTTP {status})", code="BAD_RESPONSE", status=status
        )
    return parsed["data"]


def retry_delay(
    options: Options, request: Request, error: PenguinMailsError, attempt: int
) -> float | None:
    """Seconds to wait before repeating `request`, or None not to repeat it."""
    transient = error.status == 0 or error.status == 429 or error.status >= 500
    if not request.retryable or not transient or attempt >= options.max_retries:
        return None
    hinted = error.retry_after if isinstance(error, RateLimitError) else None
    backoff = options.retry_delay * 2**attempt * random.uniform(0.75, 1.25)
    return min(options.max_retry_delay, backoff if hinted is None else hinted)


def network_error(exc: BaseException, timeout: float) -> PenguinMailsError:
    if isinstance(exc, TimeoutError):
        return PenguinMailsError(f"no answer within {timeout} s", code="TIMEOUT", status=0)
    return PenguinMailsError(f"request failed: {exc}", code="NETWORK_ERROR", status=0)
