"""Where a destination domain's mail goes: sandbox sink, configured route, smarthost, or MX.

MX answers are cached for their TTL. A domain with no MX record gets its implicit MX (the
domain's own A/AAAA, RFC 5321 section 5.1); a null MX (RFC 7505, "0 .") and a domain that
does not exist are permanent failures; a resolver timeout or SERVFAIL is temporary.
A route lives as long as the shortest TTL among the records it was built from, and
concurrent lookups of one domain share a single query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from mta.coalesce import Coalesced
from penguinmails.config import MtaSettings, split_hostport


class RouteError(Exception):
    """No way to reach the domain; `permanent` says whether to bounce or defer."""

    def __init__(self, message: str, *, permanent: bool, code: int) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


@dataclass(frozen=True)
class Route:
    """The hosts to try in order, and how to talk to them."""

    key: str  # connections are pooled per key: same hosts, same credentials
    hosts: tuple[tuple[str, int], ...]
    username: str = ""
    password: str = ""
    require_starttls: bool = False  # smarthost with credentials: never send AUTH in clear
    # The MX host name each of `hosts` was found under (parallel to it; empty for a fixed
    # route): the name MTA-STS matches and a certificate is verified against.
    names: tuple[str, ...] = ()

    def named(self, keep: Callable[[str], bool]) -> Route:
        """This route with only the hosts whose MX name `keep` accepts (a fixed route, which
        has no names, unchanged)."""
        if not self.names:
            return self
        pairs = [(h, n) for h, n in zip(self.hosts, self.names, strict=True) if keep(n)]
        return dataclasses.replace(
            self, hosts=tuple(h for h, _ in pairs), names=tuple(n for _, n in pairs)
        )


_TEMPORARY_TTL = 30.0  # how long a failed lookup is remembered, so a burst waits once
_NEGATIVE_TTL = 300.0
_CACHE_PRUNE_AT = 10_000


def _ttl(answer: dns.resolver.Answer) -> float:
    """Seconds the answer stays valid: the smallest TTL along any CNAME chain."""
    return max(answer.expiration - time.time(), 0.0)


class _Temporary(Exception):
    """An address lookup failed for a reason that may go away."""


class Router:
    def __init__(self, settings: MtaSettings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[float, Route | RouteError]] = {}
        self._lookups: Coalesced[str, Route | RouteError] = Coalesced()
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.dns_servers)
        if settings.dns_servers:
            # Each server keeps its own port (setting `resolver.port` would apply one to all).
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*split_hostport(s)) for s in settings.dns_servers
            ]
        self._resolver.lifetime = settings.dns_timeout
        smart = settings.smarthost
        self._smarthost = (
            Route(
                key=f"smarthost:{smart.host}",
                hosts=(split_hostport(smart.host),),
                username=smart.username,
                password=smart.password,
                require_starttls=bool(smart.username) and smart.starttls,
            )
            if smart.host
            else None
        )

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver routes are looked up with (MTA-STS and source checks use it too)."""
        return self._resolver

    async def route(self, domain: str, *, sandbox: bool = False) -> Route:
        """`sandbox`: a test-mode message, which only ever goes to the capture sink."""
        domain = domain.lower().rstrip(".")
        if self._settings.sandbox or sandbox:
            return Route(key="sandbox", hosts=(split_hostport(self._settings.sandbox_sink),))
        hop = self._settings.routes.get(domain)
        if hop is not None:
            return Route(key=f"route:{hop}", hosts=(split_hostport(hop),))
        if self._smarthost is not None:
            return self._smarthost
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > time.monotonic():
            result = cached[1]
        else:
            result = await self._shared_lookup(domain)
        if isinstance(result, RouteError):
            # A fresh exception each time: re-raising the cached instance would grow its
            # traceback with every message and share it between concurrent callers.
            raise RouteError(str(result), permanent=result.permanent, code=result.code)
        return result

    async def _shared_lookup(self, domain: str) -> Route | RouteError:
        """One lookup per domain at a time; callers arriving meanwhile wait for its result."""
        return await self._lookups.run(domain, lambda: self._lookup_and_cache(domain))

    async def _lookup_and_cache(self, domain: str) -> Route | RouteError:
        result, ttl = await self._lookup(domain)
        now = time.monotonic()
        if len(self._cache) >= _CACHE_PRUNE_AT:
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
        self._cache[domain] = (now + ttl, result)
        return result

    async def _lookup(self, domain: str) -> tuple[Route | RouteError, float]:
        try:
            name = dns.name.from_text(domain)
        except dns.exception.DNSException as exc:
            name, reason = None, str(exc)
        if name is None or len(name.labels) < 2:  # "" and "." name the root, not a domain
            reason = "" if name is not None else f": {reason}"
            return RouteError(
                f"5.1.2 bad destination domain {domain!r}{reason}", permanent=True, code=550
            ), _NEGATIVE_TTL
        try:
            answer = await self._resolver.resolve(name, "MX")
        except dns.resolver.NXDOMAIN:
            return RouteError(
                f"5.1.2 domain {domain} does not exist", permanent=True, code=550
            ), _NEGATIVE_TTL
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except (dns.exception.DNSException, OSError) as exc:  # SERVFAIL, timeout, refused
            return RouteError(
                f"4.4.3 DNS lookup for {domain} failed: {exc}", permanent=False, code=451
            ), _TEMPORARY_TTL
        ttl = _ttl(answer)
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            return RouteError(
                f"5.1.10 {domain} accepts no mail (null MX)", permanent=True, code=556
            ), max(ttl, 1.0)
        # A "." among real exchanges is a misconfiguration (RFC 7505 section 3): skip it.
        exchanges = [
            r.exchange.to_text(omit_final_dot=True) for r in records if r.exchange != dns.name.root
        ]
        exchanges = list(dict.fromkeys(exchanges))  # one MX listed twice is tried once
        lookups = await asyncio.gather(
            *(self._addresses(exchange) for exchange in exchanges), return_exceptions=True
        )
        hosts: list[tuple[str, int]] = []
        names: list[str] = []
        failures: list[str] = []
        for exchange, found in zip(exchanges, lookups, strict=True):
            if isinstance(found, _Temporary):
                failures.append(f"{exchange}: {found}")
                continue
            if isinstance(found, BaseException):
                raise found
            addresses, address_ttl = found
            if addresses:
                ttl = min(ttl, address_ttl)
            hosts.extend((address, self._settings.mx_port) for address in addresses)
            names.extend(exchange.lower() for _ in addresses)
        if not hosts:
            detail = f" ({'; '.join(failures)})" if failures else ""
            return RouteError(
                f"4.4.4 no address for any MX of {domain}{detail}", permanent=False, code=451
            ), _TEMPORARY_TTL if failures else 60.0
        route = Route(key="mx:" + ",".join(exchanges), hosts=tuple(hosts), names=tuple(names))
        return route, max(ttl, 1.0)

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        """A then AAAA addresses of `name`, resolved here so one resolver serves the route.

        Raises _Temporary when no address was found and a lookup failed for a reason that
        may pass (timeout, SERVFAIL): "no address" must not be concluded from an outage.
        """
        results = await asyncio.gather(
            *(self._resolver.resolve(name, rdtype) for rdtype in ("A", "AAAA")),
            return_exceptions=True,
        )
        found: list[str] = []
        ttl = _NEGATIVE_TTL
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, dns.resolver.NoAnswer | dns.resolver.NXDOMAIN):
                continue
            if isinstance(result, dns.exception.DNSException | OSError):
                failure = result
                continue
            if isinstance(result, BaseException):
                raise result
            found.extend(r.address for r in result)
            ttl = min(ttl, _ttl(result))
        if not found and failure is not None:
            raise _Temporary(str(failure))
        return found, ttl

    async def _implicit_mx(self, domain: str) -> tuple[Route | RouteError, float]:
        try:
            addresses, ttl = await self._addresses(domain)
        except _Temporary as exc:
            return RouteError(
                f"4.4.3 address lookup for {domain} failed: {exc}", permanent=False, code=451
            ), _TEMPORARY_TTL
        if addresses:
            hosts = tuple((address, self._settings.mx_port) for address in addresses)
            names = tuple(domain for _ in addresses)
            return Route(key=f"mx:{domain}", hosts=hosts, names=names), max(ttl, 1.0)
        return RouteError(
            f"5.1.2 {domain} has no MX, A or AAAA record", permanent=True, code=550
        ), _NEGATIVE_TTL
