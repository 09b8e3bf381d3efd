"""One signed webhook request: the tracker's dispatcher sends every delivery with it, the API's
test ping too, so a ping answers exactly as a real delivery to the same endpoint would.

What the answer means is the caller's to decide (the dispatcher retries, the ping reports).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from penguinmails.webhooks import InvalidEndpoint
from penguinmails.webhooks.guard import UnsafeTarget, check_url, refused
from penguinmails.webhooks.signing import signature_headers

EXCERPT_BYTES = 200  # of the response body, kept to say why a receiver refused


@dataclass(frozen=True)
class Answer:
    """What came of one request: the status the receiver answered, or why there was none."""

    status_code: int | None = None
    excerpt: bytes = b""
    error: str | None = None  # set when no status came: refused, timed out, connection error
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    webhook_id: str,
    secrets: Sequence[str],
    allow_private: bool,
    timeout: aiohttp.ClientTimeout,
) -> Answer:
    """POST `body` to `url`, signed with `secrets` under `webhook_id`, never following a
    redirect. `session` is one of `guard.client_session`, whose resolver checks every address
    a name resolves to; a host written as an address is checked here, before connecting."""
    try:
        check_url(url, allow_private=allow_private)
    except (UnsafeTarget, InvalidEndpoint) as exc:
        return Answer(error=f"refused: {exc}")
    headers = signature_headers(webhook_id, int(time.time()), body, secrets)
    headers["Content-Type"] = "application/json"
    try:
        async with session.post(
            url, data=body, headers=headers, allow_redirects=False, timeout=timeout
        ) as response:
            excerpt = await response.content.read(EXCERPT_BYTES)
            return Answer(status_code=response.status, excerpt=excerpt)
    except TimeoutError:
        return Answer(error="timed out", timed_out=True)
    except (aiohttp.ClientError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        return Answer(error=("refused: " if refused(exc) else "") + reason)
