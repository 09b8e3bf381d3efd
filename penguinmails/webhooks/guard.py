"""The address guard: which webhook URLs and addresses we may connect to, and the HTTP client
that cannot be pointed anywhere else.

A URL is checked without DNS when it is registered and before every request (`check_url`);
a name is checked on every address it resolves to, at the moment the connection is made: the
client's resolver (`GuardedResolver`) returns only checked addresses and aiohttp connects to
exactly those, so a second lookup (DNS rebinding) cannot substitute another. Hosts written as
addresses never reach a resolver, which is why `check_url` runs before each request too.
Redirects are never followed (`post.post_signed` passes allow_redirects=False), proxies from
the environment are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TypeAlias

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from penguinmails.webhooks import InvalidEndpoint

MAX_URL_LENGTH = 2048


# ---------------------------------------------------------------------------------------------
# The checks


class UnsafeTarget(ValueError):
    """A URL whose host is, or resolves to, an address we must not connect to."""


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Named explicitly rather than left to `ipaddress.is_private`, whose tables changed between
# Python releases; `is_global` is still consulted as a second opinion.
_FORBIDDEN: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("shared address space", _nets("100.64.0.0/10")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10", "fec0::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("metadata", _nets("168.63.129.16/32", "fd00:ec2::254/128")),
    ("IPv4-mapped", _nets("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96")),
    ("NAT64", _nets("64:ff9b::/96", "64:ff9b:1::/48")),
    ("6to4", _nets("2002::/16", "192.88.99.0/24")),
    ("Teredo", _nets("2001::/32")),
    (
        "reserved",
        _nets(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "100::/64",
            "2001:db8::/32",
            "2001:10::/28",
            "2001:20::/28",
        ),
    ),
)

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def forbidden_reason(address: Address) -> str | None:
    """Why we must not connect to `address`, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return "scoped (link-local)"
    for reason, networks in _FORBIDDEN:
        if any(address.version == net.version and address in net for net in networks):
            return reason
    if not address.is_global or address.is_multicast or address.is_reserved:
        return "not a public address"
    return None


def literal_address(host: str) -> Address | None:
    """The address a host that is written as one means, in any form a resolver accepts.

    `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` all mean 127.0.0.1 to inet_aton,
    and aiohttp connects to all-digit hosts without asking the resolver, so they are read
    here exactly as the socket layer would read them.
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
    except OSError:
        return None


def _looks_numeric(host: str) -> bool:
    # aiohttp's own test for "this is an address, skip the resolver".
    return ":" in host or host.replace(".", "").isdigit()


def check_url(url: str, *, allow_private: bool = False) -> yarl.URL:
    """Parse an endpoint URL and refuse what can be refused without DNS.

    Raises InvalidEndpoint for a malformed URL and UnsafeTarget for a forbidden literal host.
    Names are checked when they are resolved (`resolve_checked`).
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidEndpoint("url", f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidEndpoint("url", "must not contain whitespace or control characters")
    try:
        parsed = yarl.URL(url)
    except ValueError as exc:
        raise InvalidEndpoint("url", f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidEndpoint("url", "must be an absolute http:// or https:// URL")
    if parsed.user is not None or parsed.password is not None:
        raise InvalidEndpoint("url", "must not contain credentials")
    if parsed.fragment:
        raise InvalidEndpoint("url", "must not contain a fragment")
    if allow_private:
        return parsed
    address = literal_address(parsed.host)
    if address is not None:
        reason = forbidden_reason(address)
        if reason:
            raise UnsafeTarget(f"{parsed.host} is a {reason} address")
    elif _looks_numeric(parsed.host):
        raise UnsafeTarget(f"{parsed.host} is not a valid address")
    elif parsed.host.rstrip(".") == "localhost" or parsed.host.endswith(".localhost"):
        raise UnsafeTarget(f"{parsed.host} is a loopback name")
    return parsed


async def resolve_checked(
    host: str, port: int, *, family: int = socket.AF_UNSPEC
) -> list[tuple[int, int, str]]:
    """Resolve `host`; refuse it if any address is forbidden. Returns (family, proto, address).

    All addresses, not just the first: a name with one public and one private address would
    otherwise reach the private one whenever the connector falls back to it. The caller
    connects to exactly these addresses, so a second lookup cannot swap them (DNS rebinding).
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeTarget(f"{host} does not resolve: {exc.strerror}") from None
    found: list[tuple[int, int, str]] = []
    for fam, _, proto, _, sockaddr in infos:
        text = str(sockaddr[0])
        address = ipaddress.ip_address(text)
        reason = forbidden_reason(address)
        if reason:
            raise UnsafeTarget(f"{host} resolves to {text}, a {reason} address")
        found.append((fam, proto, text))
    if not found:
        raise UnsafeTarget(f"{host} has no addresses")
    return found


async def validate_url(url: str, *, allow_private: bool, resolve: bool = True) -> str:
    """The URL to store, or InvalidEndpoint (with the guard's reason for an unsafe target).

    A name that does not resolve yet is accepted: DNS may be set up after the endpoint, and
    the dispatcher checks again before every delivery, which is where it matters.
    """
    try:
        parsed = check_url(url, allow_private=allow_private)
        if resolve and not allow_private and literal_address(parsed.host or "") is None:
            try:
                await resolve_checked(parsed.host or "", parsed.port or 0)
            except UnsafeTarget as exc:
                if "does not resolve" not in str(exc) and "has no addresses" not in str(exc):
                    raise
    except UnsafeTarget as exc:
        raise InvalidEndpoint(
            "url",
            f"refused: {exc} (targets on private networks need [webhooks] "
            "allow_private_targets = true, as `penguinmails up` sets)",
        ) from None
    return str(parsed)


# ---------------------------------------------------------------------------------------------
# The guarded client

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
