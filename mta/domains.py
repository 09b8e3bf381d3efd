"""Sending domains: their DKIM keys, generated, sealed at rest, and cached for the signer.

`penguinmails domains add` makes the keys and prints the DNS records to publish; `domains
show` prints them again. Private keys are stored sealed with AES-256-GCM under a key derived
from the server keys (`derive(key, "at-rest")`): a database dump alone cannot sign mail as
our tenants. Every server key is tried when unsealing, so the server keys can rotate.

The composer reads keys through `KeyCache`: loaded on a domain's first message, kept for a
TTL, so the steady state costs no database round trip per message, and a key added or
rotated with the CLI is picked up by every MTA process within the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from mta import dkim
from penguinmails.config import Settings
from penguinmails.messages import ensure_tenant
from penguinmails.queries import load
from penguinmails.secrets import SealError, seal, server_keys, unseal

SQL = load("mta", "queries.sql")
log = logging.getLogger(__name__)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
ALGORITHMS: dict[str, tuple[dkim.Algorithm, ...]] = {
    "rsa": (dkim.RSA,),
    "ed25519": (dkim.ED25519,),
    "both": (dkim.RSA, dkim.ED25519),
}


class DomainError(Exception):
    """A request the operator must correct; the message is shown as is."""


class KeyUnavailable(RuntimeError):
    """A domain has keys but none can be used now (database down, server key missing).

    Not a ComposeError on purpose: the message is fine and must not be failed for it; the
    delivery is abandoned and its lease lets another attempt take it later.
    """


# -- sealing --------------------------------------------------------------------------------


def _aad(domain: str, selector: str, algorithm: str) -> bytes:
    return f"penguinmails:dkim:{domain}:{selector}:{algorithm}".encode()


def seal_key(
    keys: Sequence[bytes], der: bytes, domain: str, selector: str, algorithm: str
) -> bytes:
    """Encrypt with the newest server key; the row's identity is the associated data."""
    return seal(keys, der, _aad(domain, selector, algorithm))


def unseal_key(
    keys: Sequence[bytes], blob: bytes, domain: str, selector: str, algorithm: str
) -> bytes:
    try:
        return unseal(keys, blob, _aad(domain, selector, algorithm))
    except SealError as exc:
        raise KeyUnavailable(
            f"{selector}._domainkey.{domain}: {exc} "
            "(was security.secret_keys changed without keeping the old key?)"
        ) from exc


# -- the CLI's operations -------------------------------------------------------------------


def normalise_domain(domain: str) -> str:
    """Lower-case, no trailing dot, IDNA for internationalised names; else DomainError."""
    name = domain.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise DomainError(f"not a domain name: {domain!r}") from exc
    if len(name) > 253 or not _DOMAIN.match(name):
        raise DomainError(f"not a domain name: {domain!r}")
    return name


def _selectors(selector: str | None, algorithms: Sequence[dkim.Algorithm]) -> list[str]:
    base = (selector or f"pm{datetime.now(UTC):%Y%m}").lower()
    if not _SELECTOR.match(base) or len(base) > 60:
        raise DomainError(f"not a valid selector: {selector!r} (letters, digits, hyphens)")
    if len(algorithms) == 1:
        return [base]
    # One DNS record per selector, and each record names one key type.
    return [base if a == dkim.RSA else f"{base}-ed25519" for a in algorithms]


async def add_domain(
    conn: asyncpg.Connection,
    settings: Settings,
    domain: str,
    *,
    tenant: str,
    selector: str | None = None,
    algorithm: str = "rsa",
) -> list[str]:
    """Generate and store keys for `domain`; returns the TXT records to publish.

    A domain belongs to one tenant. Adding a key with a new selector to a domain that has
    one is a rotation: the newest key of each algorithm signs from then on, so publish its
    record first.
    """
    name = normalise_domain(domain)
    if algorithm not in ALGORITHMS:
        raise DomainError(f"unknown algorithm {algorithm!r} (rsa, ed25519, both)")
    algorithms = ALGORITHMS[algorithm]
    selectors = _selectors(selector, algorithms)
    keys = server_keys(settings)
    # Generated outside the transaction: RSA generation takes a while, locks should not.
    generated = await asyncio.to_thread(lambda: [dkim.generate(a) for a in algorithms])
    async with conn.transaction():
        tenant_id = await ensure_tenant(conn, tenant)
        await conn.execute(SQL["lock_sending_domain"], name)
        existing = await conn.fetch(SQL["sending_domain_keys"], name)
        if any(r["tenant_id"] != tenant_id for r in existing):
            raise DomainError(f"{name} is already a sending domain of another tenant")
        taken = {r["selector"] for r in existing if r["selector"] in selectors}
        if taken:
            raise DomainError(
                f"{name} already has a key with selector {', '.join(sorted(taken))}; "
                f"`penguinmails domains show {name}` prints its record, or choose a new "
                "--selector to rotate"
            )
        for alg, sel, (der, public) in zip(algorithms, selectors, generated, strict=True):
            sealed = seal_key(keys, der, name, sel, alg)
            await conn.execute(
                SQL["insert_sending_domain_key"], tenant_id, name, sel, alg, sealed, public
            )
    log.info(
        "sending domain key added",
        extra={"action": "add_domain", "domain": name, "selectors": selectors},
    )
    return [
        dkim.txt_record(name, s, a, p[1])
        for a, s, p in zip(algorithms, selectors, generated, strict=True)
    ]


async def show_domain(conn: asyncpg.Connection, domain: str) -> list[str]:
    """The TXT records of every key the domain has, oldest first."""
    name = normalise_domain(domain)
    rows = await conn.fetch(SQL["sending_domain_keys"], name)
    if not rows:
        raise DomainError(f"{name} is not a sending domain; add it with `penguinmails domains add`")
    return [
        dkim.txt_record(name, r["selector"], r["algorithm"], r["public_key"])
        for r in reversed(rows)
    ]


# -- the signer's cache ---------------------------------------------------------------------


@dataclass(frozen=True)
class Aligned:
    """A From domain's own return-path domain and tracking host, once verified; None: the
    global [mta] bounce_domain and [tracker] base_url."""

    return_path: str | None = None
    tracking: str | None = None


@dataclass
class _Entry:
    expires: float
    by_tenant: dict[int, list[dkim.DkimKey]] = field(default_factory=dict)
    aligned: Aligned = field(default_factory=Aligned)


def _signing_keys(
    rows: Sequence[Any], keys: Sequence[bytes], domain: str
) -> dict[int, list[dkim.DkimKey]]:
    """Per tenant, the newest key of each algorithm (rows come newest first), RSA first."""
    chosen: dict[tuple[int, str], dkim.DkimKey] = {}
    for row in rows:
        slot = (row["tenant_id"], row["algorithm"])
        if slot in chosen:
            continue
        der = unseal_key(keys, row["private_key"], domain, row["selector"], row["algorithm"])
        chosen[slot] = dkim.load_key(domain, row["selector"], row["algorithm"], der)
    by_tenant: dict[int, list[dkim.DkimKey]] = {}
    for (tenant_id, _), key in sorted(chosen.items(), key=lambda i: i[0][1] != dkim.RSA):
        by_tenant.setdefault(tenant_id, []).append(key)
    for row in rows:  # the account's test mode signs with the same keys
        if row["test_tenant_id"] is not None:
            by_tenant[row["test_tenant_id"]] = by_tenant[row["tenant_id"]]
    return by_tenant


class KeyCache:
    """Signing keys per From domain, loaded lazily and kept for `ttl` seconds.

    Concurrent misses for one domain share a single query. If a refresh fails, the keys
    already held stay in use (and the refresh is retried soon) rather than stopping mail.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._keys = server_keys(settings)
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self.loads = 0  # database reads so far; for tests and metrics

    async def keys_for(self, domain: str, tenant_id: int) -> list[dkim.DkimKey]:
        """The keys to sign a message of `tenant_id` from `domain` with; [] for unsigned."""
        return (await self._entry(domain)).by_tenant.get(tenant_id, [])

    async def aligned_for(self, domain: str, tenant_id: int) -> Aligned:
        """The domain's verified return path and tracking host, for the tenant (either mode)
        that owns it; another tenant's mail from the domain uses the global ones."""
        entry = await self._entry(domain)
        return entry.aligned if tenant_id in entry.by_tenant else Aligned()

    async def _entry(self, domain: str) -> _Entry:
        entry = self._entries.get(domain)
        if entry is None or entry.expires <= self._clock():
            entry = await self._refresh(domain, entry)
        return entry

    async def _refresh(self, domain: str, stale: _Entry | None) -> _Entry:
        pending = self._loading.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[domain] = future
        try:
            entry = await self._load(domain)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KeyUnavailable) as exc:
            if stale is None:
                future.set_exception(KeyUnavailable(f"DKIM keys for {domain}: {exc}"))
                future.exception()  # retrieved: waiters get it, nobody else must
                raise KeyUnavailable(f"DKIM keys for {domain}: {exc}") from exc
            log.warning(
                "refreshing DKIM keys failed; signing with the keys already loaded",
                extra={"action": "dkim_keys", "domain": domain, "error": str(exc)},
            )
            entry = _Entry(self._clock() + min(self._ttl, 5.0), stale.by_tenant, stale.aligned)
            self._entries[domain] = entry
            future.set_result(entry)
            return entry
        finally:
            del self._loading[domain]
        self._entries[domain] = entry
        future.set_result(entry)
        return entry

    async def _load(self, domain: str) -> _Entry:
        self.loads += 1
        rows = await self._pool.fetch(SQL["signing_keys"], domain)
        row = await self._pool.fetchrow(SQL["aligned_domains"], domain)
        aligned = Aligned(row["return_path"], row["tracking"]) if row is not None else Aligned()
        return _Entry(self._clock() + self._ttl, _signing_keys(rows, self._keys, domain), aligned)

    def invalidate(self, domain: str | None = None) -> None:
        """Forget cached keys (one domain, or all): the next message reloads them."""
        if domain is None:
            self._entries.clear()
        else:
            self._entries.pop(domain, None)
