"""The errors every call raises: PenguinMailsError, or a subclass chosen by the HTTP status,
each keeping the API's `code`, the `request_id` to quote and the `status`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


class PenguinMailsError(Exception):
    """`status` is 0 when no answer arrived (a network error or a timeout)."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        request_id: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.details = details or []
        self.headers = dict(headers or {})


class ValidationError(PenguinMailsError):
    """400 or 422: `details` name each offending field."""


class AuthenticationError(PenguinMailsError):
    """401: missing, malformed, revoked or expired credentials."""


class PermissionDeniedError(PenguinMailsError):
    """403: this key may not do this (a publishable key writing, a tier above the plan)."""


class NotFoundError(PenguinMailsError):
    """404: no such resource, or an endpoint this server does not have."""


class ConflictError(PenguinMailsError):
    """409: conflicts with the resource's state (or reuses an idempotency key)."""


class RateLimitError(PenguinMailsError):
    """429: `retry_after` is the seconds to wait (from Retry-After), or None."""

    def __init__(self, message: str, *, retry_after: float | None, **init: Any) -> None:
        super().__init__(message, **init)
        self.retry_after = retry_after


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_BY_STATUS: dict[int, type[PenguinMailsError]] = {
    400: ValidationError,
    422: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> PenguinMailsError:
    """The error for an answer: `body` is the parsed JSON (or None), `headers` lower-cased."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    init: dict[str, Any] = {
        "code": error.get("code") or f"HTTP_{status}",
        "status": status,
        "request_id": error.get("request_id") or headers.get("x-request-id"),
        "details": error.get("details") or [],
        "headers": headers,
    }
    message = error.get("message") or f"HTTP {status}"
    if status == 429:
        return RateLimitError(message, retry_after=retry_after_seconds(headers), **init)
    return _BY_STATUS.get(status, PenguinMailsError)(message, **init)
