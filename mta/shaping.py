"""Traffic shaping by site and provider, and the rules that react to what receivers say.

Receivers count what reaches their servers, not what we address to their domains: a thousand
Google Workspace domains all have MX `aspmx.l.google.com`, and Google judges the sum. So the
unit of shaping is the *site*, the set of MX hosts a domain resolves to (domains with the same
set share one site), and above it the *provider*, matched by MX host suffix (`google.com`,
`outlook.com`) or by recipient domain. Each level may cap connections, messages per
connection and the message rate; a delivery obeys every level at once, so the tightest wins.
Per-domain rules (`[mta.throttle."example.com"]`) stay, as the innermost level.

The rules come from a TOML file (`[mta] shaping_file`; `configs/shaping.toml` ships rules for
the big providers):

    [site]                      # every site's own limits
    max_connections = 10

    [providers.google]
    mx_suffixes = ["google.com", "googlemail.com"]
    max_connections = 20        # across every MTA process, toward all of Google
    rate_per_second = 50

    [[automation]]              # what to do when a provider's reply says "slow down"
    name = "yahoo-ts"
    provider = "yahoo"
    code = 421
    text = '\\[TSS?0[1-9]\\]'
    action = "suspend"          # suspend | throttle | bounce
    scope = "provider"          # site | provider | tenant | campaign
    duration = 3600

Everything here is pure: which site and provider a route belongs to, what limits apply, and
which automation rule a reply fires. Holding the limits across processes is mta/shared.py.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from mta.outcomes import Reply
from mta.routing import Route
from penguinmails.config import ConfigError, Section, ThrottleRule


class Limits(Section):
    """One level's limits; a missing value sets no limit at this level."""

    max_connections: int | None = Field(default=None, ge=1)
    messages_per_connection: int | None = Field(default=None, ge=1)
    rate_per_second: float | None = Field(default=None, gt=0)  # messages, all processes
    burst: int | None = Field(default=None, ge=1)  # messages saved up at the rate, at most


class Provider(Limits):
    # A site is this provider's when one of its MX hosts is a suffix here or ends with
    # "." + one ("google.com" matches "aspmx.l.google.com"); or by recipient domain.
    mx_suffixes: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)

    @field_validator("mx_suffixes", "domains")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower().strip(".") for v in value if v.strip()]


Action = Literal["suspend", "throttle", "bounce"]
ScopeKind = Literal["site", "provider", "tenant", "campaign"]


class Automation(Section):
    """A reply pattern and the reaction to it. Every given condition must hold."""

    name: str = Field(min_length=1)
    provider: str = ""  # "" any provider (or none)
    code: int | None = Field(default=None, ge=200, le=599)
    enhanced: str = ""  # a prefix of the enhanced status code: "4.7." matches 4.7.0
    text: str = ""  # a regular expression searched in the reply text, case-insensitive
    action: Action
    scope: ScopeKind = "site"
    duration: float = Field(default=3600.0, gt=0, le=7 * 86400)
    # For `throttle`: the limits for the duration (either or both).
    rate_per_second: float | None = Field(default=None, gt=0)
    max_connections: int | None = Field(default=None, ge=1)

    @field_validator("text")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @cached_property
    def pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.text, re.IGNORECASE) if self.text else None

    def fires(self, reply: Reply, provider: str | None) -> bool:
        if self.provider and self.provider != provider:
            return False
        if self.code is not None and reply.code != self.code:
            return False
        text = reply.message or ""
        if self.enhanced and not (reply.enhanced or _enhanced(text)).startswith(self.enhanced):
            return False
        return self.pattern is None or self.pattern.search(text) is not None


class ShapingRules(Section):
    site: Limits = Field(default_factory=Limits)
    providers: dict[str, Provider] = Field(default_factory=dict)
    automation: list[Automation] = Field(default_factory=list)


def load_rules(path: str) -> ShapingRules:
    """The rules of `path` ("" : none beyond the per-domain throttles)."""
    if not path:
        return ShapingRules()
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"[mta] shaping_file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"[mta] shaping_file {path}: {exc}") from None
    try:
        rules = ShapingRules.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    unknown = {a.provider for a in rules.automation if a.provider} - set(rules.providers)
    if unknown:
        raise ConfigError(f"{path}: automation names unknown providers: {sorted(unknown)}")
    return rules


@dataclass(frozen=True)
class Scope:
    """Where one delivery goes, at every level shaping knows."""

    domain: str
    site: str  # "site:<mx hosts>" for MX routes; the route's key for a fixed route
    provider: str | None

    @property
    def provider_key(self) -> str | None:
        """The provider level's shared-state key, when the site has a provider."""
        return f"provider:{self.provider}" if self.provider is not None else None


@dataclass(frozen=True)
class Level:
    key: str
    max_connections: int | None
    rate_per_second: float | None
    burst: int


@dataclass(frozen=True)
class Effective:
    """The limits of every level a delivery passes, and what they come to together."""

    levels: tuple[Level, ...]
    messages_per_connection: int

    @property
    def max_connections(self) -> int:
        return min(lv.max_connections for lv in self.levels if lv.max_connections is not None)

    @property
    def capped(self) -> tuple[Level, ...]:
        return tuple(lv for lv in self.levels if lv.max_connections is not None)

    @property
    def rated(self) -> tuple[Level, ...]:
        return tuple(lv for lv in self.levels if lv.rate_per_second is not None)


def site_key(route: Route) -> str:
    """The site of a route: its MX host names as a set, so the order DNS gives them in and
    the domain asking do not matter. Fixed routes (a configured hop, a smarthost, the sink)
    are their own site."""
    if not route.key.startswith("mx:"):
        return route.key
    names = sorted({n.lower().rstrip(".") for n in route.key[3:].split(",") if n})
    joined = ",".join(names)
    if len(joined) > 200:  # a key stays a short row key whatever the MX set
        joined = hashlib.sha256(joined.encode()).hexdigest()[:32]
    return f"site:{joined}"


class Shaper:
    def __init__(self, rules: ShapingRules) -> None:
        self.rules = rules

    def scope(self, domain: str, route: Route) -> Scope:
        domain = domain.lower().rstrip(".")
        return Scope(domain, site_key(route), self._provider(domain, route))

    def _provider(self, domain: str, route: Route) -> str | None:
        names = (
            [n.lower().rstrip(".") for n in route.key[3:].split(",")]
            if (route.key.startswith("mx:"))
            else []
        )
        for name, provider in self.rules.providers.items():
            if domain in provider.domains:
                return name
            for host in names:
                if any(host == s or host.endswith("." + s) for s in provider.mx_suffixes):
                    return name
        return None

    def limits(self, scope: Scope, domain_rule: ThrottleRule) -> Effective:
        """Every level's limits: the domain's own rule, its site's and its provider's."""
        levels = [
            Level(
                f"domain:{scope.domain}",
                domain_rule.max_connections,
                domain_rule.rate_per_second or None,
                domain_rule.burst,
            ),
            _level(scope.site, self.rules.site),
        ]
        per_connection = [domain_rule.messages_per_connection]
        if self.rules.site.messages_per_connection is not None:
            per_connection.append(self.rules.site.messages_per_connection)
        if scope.provider is not None and scope.provider_key is not None:
            provider = self.rules.providers[scope.provider]
            levels.append(_level(scope.provider_key, provider))
            if provider.messages_per_connection is not None:
                per_connection.append(provider.messages_per_connection)
        return Effective(tuple(levels), min(per_connection))

    def reaction(self, reply: Reply, scope: Scope) -> Automation | None:
        """The first automation rule this reply fires, if any (2xx replies fire none)."""
        if reply.code is not None and 200 <= reply.code < 300:
            return None
        for rule in self.rules.automation:
            if rule.fires(reply, scope.provider):
                return rule
        return None


def _level(key: str, limits: Limits) -> Level:
    rate = limits.rate_per_second
    burst = limits.burst or (max(1, int(rate)) if rate else 1)
    return Level(key, limits.max_connections, rate, burst)


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _enhanced(text: str) -> str:
    found = _ENHANCED.search(text)
    return ".".join(found.groups()) if found else ""
