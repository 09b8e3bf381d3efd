"""The HTTP client webhooks go out through, which cannot be pointed at our own network.

Endpoint URLs are chosen by customers. The check happens where the connection is made:
aiohttp asks this resolver for a name's addresses and connects to exactly what it returns,
so every resolved address is checked and a second lookup (DNS rebinding) cannot substitute
another. Hosts written as addresses never reach a resolver, so the dispatcher checks those
with `penguinmails.webhooks.check_url` before each request. Redirects are never followed
(the dispatcher passes allow_redirects=False), proxies from the environment are ignored.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from penguinmails.webhooks import UnsafeTarget, resolve_checked

USER_AGENT = "PenguinMails-Webhooks/1.0"


class RefusedAddress(OSError):
    """Raised by the resolver; an OSError so aiohttp reports it as a connection failure."""


class GuardedResolver(AbstractResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await resolve_checked(host, port, family=family)
        except UnsafeTarget as exc:
            raise RefusedAddress(f"refused: {exc}") from None
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for fam, proto, address in found
        ]

    async def close(self) -> None:
        return None


def client_session(
    *, allow_private: bool, limit: int = 100, timeout: aiohttp.ClientTimeout | None = None
) -> aiohttp.ClientSession:
    """A session for webhook requests; `allow_private` (tests, demos) skips the guard."""
    connector = aiohttp.TCPConnector(
        limit=limit,
        resolver=None if allow_private else GuardedResolver(),
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        auto_decompress=False,
        timeout=timeout or aiohttp.client.DEFAULT_TIMEOUT,
    )


def refused(exc: BaseException) -> bool:
    """Whether a client error was the guard refusing the target."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes, bounded in case it loops
        if seen is None:
            return False
        if isinstance(seen, RefusedAddress):
            return True
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return False
