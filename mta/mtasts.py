"""MTA-STS (RFC 8461): which receivers promise TLS with a valid certificate, and on which MX.

A domain that publishes `_mta-sts.<domain>` TXT (`v=STSv1; id=...`) serves its policy at
`https://mta-sts.<domain>/.well-known/mta-sts.txt`: a mode (`enforce`, `testing`, `none`), the
MX host patterns it delivers through, and how long to remember it (`max_age`). In `enforce`,
we deliver only to an MX the policy names, only over TLS, and only when the certificate
verifies for that MX name; otherwise the message is deferred with the reason, never sent in
clear. `testing` asks for reports but no enforcement, so it changes nothing here beyond being
recorded with the delivery's TLS result.

The point of the cache is that an attacker who can block or spoof DNS or the policy fetch
must not be able to switch the policy off: a policy is kept for its max_age (in
`mta_sts_policies`, so every MTA process and a restart see it) and used whenever the TXT
record is missing, the TXT lookup fails, or the fetch fails. A new policy is fetched only
when the TXT record's id differs from the cached one (or the cached one has expired). Only a
successfully fetched policy ever replaces a cached one.

Choices, and why:
- The TXT record is re-read at most every `RECHECK_SECONDS` per domain and process: a policy
  change is noticed within minutes without a DNS query per message.
- The policy fetch follows no redirect, insists on 200 and text/plain, reads at most 64 KiB
  and gives up after 10 seconds (RFC 8461 section 3.3); its certificate must verify for
  `mta-sts.<domain>` against the system CAs plus `[mta] tls_ca_file`.
- Names are resolved through the MTA's own resolver (`[mta] dns_servers`), as MX lookups are.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
import asyncpg
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from mta.coalesce import Coalesced
from penguinmails.config import MtaSettings
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("mta")

Mode = Literal["enforce", "testing", "none"]
_MODES: dict[str, Mode] = {"enforce": "enforce", "testing": "testing", "none": "none"}
MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # one year: the most RFC 8461 allows
FETCH_TIMEOUT = 10.0
RECHECK_SECONDS = 300.0
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MX_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
)


class PolicyError(ValueError):
    """A policy text or TXT record that does not follow RFC 8461."""


@dataclass(frozen=True)
class Policy:
    id: str  # the TXT record's id it was fetched under
    mode: Mode
    mx: tuple[str, ...]  # lower case; "*.example.net" matches exactly one more label
    max_age: int
    expires_at: datetime

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def matches(self, host: str) -> bool:
        """Whether MX `host` is one the policy names (RFC 8461 section 4.1)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(strings: list[str]) -> str:
    """The policy id of the one `v=STSv1` record among `strings` (each TXT record's text).
    PolicyError when there is none, more than one, or it is malformed: then the domain is
    taken not to implement MTA-STS (RFC 8461 section 3.1)."""
    records = [s for s in strings if s.startswith("v=STSv1;") or s == "v=STSv1"]
    if len(records) != 1:
        raise PolicyError(f"{len(records)} v=STSv1 TXT records")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if not key:
            continue
        if not sep:
            raise PolicyError(f"TXT field without a value: {part.strip()!r}")
        fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    if not _ID.match(policy_id):
        raise PolicyError(f"TXT id is not 1-32 letters and digits: {policy_id!r}")
    return policy_id


def parse_policy(text: str, policy_id: str, now: datetime) -> Policy:
    """The policy file's text (RFC 8461 section 3.2); unknown keys are ignored."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line without a colon: {line[:80]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            pattern = value.lower().rstrip(".")
            if not _MX_PATTERN.match(pattern):
                raise PolicyError(f"bad mx pattern: {value[:80]!r}")
            mx.append(pattern)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not STSv1")
    mode = _MODES.get(fields.get("mode", ""))
    if mode is None:
        raise PolicyError(f"mode is {fields.get('mode')!r}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(f"max_age is {age!r}")
    max_age = min(int(age), MAX_AGE_LIMIT)
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without an mx")
    return Policy(policy_id, mode, tuple(mx), max_age, now + timedelta(seconds=max_age))


class _Resolver(AbstractResolver):
    """aiohttp's name lookups through the MTA's resolver rather than the system's."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found: list[ResolveResult] = []
        for rdtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as exc:
                raise OSError(f"cannot resolve {host}: {exc}") from exc
            found.extend(
                {
                    "hostname": host,
                    "host": r.to_text(),
                    "port": port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
                for r in answer
            )
        if not found:
            raise OSError(f"{host} has no address")
        return found

    async def close(self) -> None:
        return None


def verifying_context(settings: MtaSettings) -> ssl.SSLContext:
    """Certificates checked against the system CAs plus `[mta] tls_ca_file` (a private PKI,
    or a test CA), as MTA-STS requires for the policy host and the MX."""
    context = ssl.create_default_context()
    if settings.tls_ca_file:
        context.load_verify_locations(settings.tls_ca_file)
    return context


class MtaSts:
    """Policies per destination domain, cached in memory and in the database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: MtaSettings,
        resolver: dns.asyncresolver.Resolver,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._resolver = resolver
        self._known: dict[str, tuple[float, Policy | None]] = {}
        self._lookups: Coalesced[str, Policy | None] = Coalesced()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        self._lookups.cancel()
        if self._session is not None:
            await self._session.close()

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain`, or None when it has none (or MTA-STS is off)."""
        if not self._settings.mta_sts:
            return None
        domain = domain.lower().rstrip(".")
        known = self._known.get(domain)
        if known is not None and known[0] > time.monotonic():
            policy = known[1]
            if policy is None or policy.expires_at > datetime.now(UTC):
                return policy
        return await self._lookups.run(domain, lambda: self._refresh(domain))

    async def _refresh(self, domain: str) -> Policy | None:
        now = datetime.now(UTC)
        cached = await self._cached(domain, now)
        policy = cached
        try:
            policy_id = await self._txt(domain)
        except _NoRecord:
            policy_id = None
        except (PolicyError, dns.exception.DNSException) as exc:
            log.info(
                "mta-sts record unusable; keeping any cached policy",
                extra={"action": "mta_sts", "domain": domain, "error": str(exc)},
            )
            policy_id = None
        if policy_id is not None and (cached is None or cached.id != policy_id):
            try:
                policy = await self._fetch(domain, policy_id, now)
            except (PolicyError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "mta-sts policy fetch failed; keeping any cached policy",
                    extra={"action": "mta_sts", "domain": domain, "error": str(exc)},
                )
            else:
                await self._store(domain, policy, now)
        self._known[domain] = (time.monotonic() + RECHECK_SECONDS, policy)
        return policy

    async def _cached(self, domain: str, now: datetime) -> Policy | None:
        row = await self._pool.fetchrow(SQL["mta_sts_policy"], domain)
        if row is None or row["expires_at"] <= now:
            return None
        return Policy(
            row["policy_id"], row["mode"], tuple(row["mx"]), row["max_age"], row["expires_at"]
        )

    async def _store(self, domain: str, policy: Policy, now: datetime) -> None:
        await self._pool.execute(
            SQL["store_mta_sts_policy"],
            domain,
            policy.id,
            policy.mode,
            list(policy.mx),
            policy.max_age,
            now,
            policy.expires_at,
        )

    async def _txt(self, domain: str) -> str:
        try:
            answer = await self._resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            raise _NoRecord from None
        strings = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        return parse_txt(strings)

    async def _fetch(self, domain: str, policy_id: str, now: datetime) -> Policy:
        session = self._client()
        url = f"https://mta-sts.{domain}:{self._settings.mta_sts_port}/.well-known/mta-sts.txt"
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with session.get(url, allow_redirects=False, timeout=timeout) as response:
            if response.status != 200:
                raise PolicyError(f"policy fetch answered {response.status}")
            if response.content_type != "text/plain":
                raise PolicyError(f"policy served as {response.content_type}, not text/plain")
            body = await response.content.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise PolicyError("policy larger than 64 KiB")
        return parse_policy(body.decode("utf-8", "replace"), policy_id, now)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_Resolver(self._resolver),
                ssl=verifying_context(self._settings),
                limit=16,
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session


class _NoRecord(Exception):
    """No _mta-sts TXT record at all."""


def describe(policy: Policy | None) -> dict[str, Any]:
    """What a delivery's TLS record says about the policy it was held to."""
    if policy is None:
        return {"mta_sts": None}
    return {"mta_sts": policy.mode, "mta_sts_id": policy.id}
