"""Where a destination domain's mail goes: sandbox sink, configured route, smarthost, or MX.

MX answers are cached for their TTL. A domain with no MX record gets its implicit MX (the
domain's own A/AAAA, RFC 5321 section 5.1); a null MX (RFC 7505, "0 .") and a domain that
does not exist are permanent failures; a resolver timeout or SERVFAIL is temporary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

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


class Router:
    def __init__(self, settings: MtaSettings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[float, Route | RouteError]] = {}
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.dns_servers)
        if settings.dns_servers:
            self._resolver.nameservers = [split_hostport(s)[0] for s in settings.dns_servers]
            self._resolver.port = split_hostport(settings.dns_servers[0])[1]
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

    async def route(self, domain: str) -> Route:
        domain = domain.lower().rstrip(".")
        if self._settings.sandbox:
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
            result, ttl = await self._lookup(domain)
            self._cache[domain] = (time.monotonic() + ttl, result)
        if isinstance(result, RouteError):
            raise result
        return result

    async def _lookup(self, domain: str) -> tuple[Route | RouteError, float]:
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return RouteError(
                f"5.1.2 domain {domain} does not exist", permanent=True, code=550
            ), 300
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            return RouteError(
                f"4.4.3 DNS lookup for {domain} failed: {exc}", permanent=False, code=451
            ), 30
        records = sorted(answer, key=lambda r: r.preference)
        exchanges = [r.exchange.to_text(omit_final_dot=True) for r in records]
        if len(records) == 1 and exchanges[0] in ("", "."):
            return RouteError(
                f"5.1.10 {domain} accepts no mail (null MX)", permanent=True, code=556
            ), float(answer.rrset.ttl if answer.rrset else 300)
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        hosts: list[tuple[str, int]] = []
        for exchange in exchanges:
            addresses, _ = await self._addresses(exchange)
            hosts.extend((address, self._settings.mx_port) for address in addresses)
        if not hosts:
            return RouteError(
                f"4.4.4 no address for any MX of {domain}", permanent=False, code=451
            ), 60
        return Route(key="mx:" + ",".join(exchanges), hosts=tuple(hosts)), max(ttl, 1.0)

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        """A then AAAA addresses of `name`, resolved here so one resolver serves the route."""
        found: list[str] = []
        ttl = 300.0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype)
            except (
                dns.resolver.NoAnswer,
                dns.resolver.NXDOMAIN,
                dns.resolver.NoNameservers,
                dns.exception.Timeout,
            ):
                continue
            found.extend(r.address for r in answer)
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
        return found, ttl

    async def _implicit_mx(self, domain: str) -> tuple[Route | RouteError, float]:
        addresses, ttl = await self._addresses(domain)
        if addresses:
            hosts = tuple((address, self._settings.mx_port) for address in addresses)
            return Route(key=f"mx:{domain}", hosts=hosts), max(ttl, 1.0)
        return RouteError(
            f"5.1.2 {domain} has no MX, A or AAAA record", permanent=True, code=550
        ), 300
