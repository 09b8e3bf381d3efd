"""penguinmails-client: the PenguinMails API from Python, sync and async."""

from penguinmails_client.client import AsyncPenguinMails, PenguinMails
from penguinmails_client.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PenguinMailsError,
    PermissionDeniedError,
    RateLimitError,
    ValidationError,
)
from penguinmails_client.webhooks import verify_webhook_signature

__all__ = [
    "AsyncPenguinMails",
    "AuthenticationError",
    "ConflictError",
    "NotFoundError",
    "PenguinMails",
    "PenguinMailsError",
    "PermissionDeniedError",
    "RateLimitError",
    "ValidationError",
    "verify_webhook_signature",
]
