"""Every error the API answers with, in one place: the exception and its constructors.

`envelope` turns an ApiError into the error envelope; routes raise these (or build one for a
case of their own) and never write an error response themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ApiError(Exception):
    """An error to answer with; `details` name the offending fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = [dict(d) for d in details]
        self.headers = dict(headers or {})


def validation_error(details: Sequence[Mapping[str, str]], message: str = "") -> ApiError:
    first = details[0] if details else {"field": "", "message": "invalid"}
    text = message or f"{first['field'] or 'request'}: {first['message']}"
    return ApiError(422, "VALIDATION_ERROR", text, details)


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, "CONFLICT", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", message)


def unauthorized(message: str = "Invalid or missing credentials") -> ApiError:
    return ApiError(
        401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": 'Bearer realm="penguinmails"'}
    )
