"""Webhook endpoints: how they are stored, which URLs they may have, and how requests are signed.

The API creates and manages endpoints through these functions; the tracker's dispatcher reads
them to sign and send. Both sides share the one address guard, because an endpoint URL is
chosen by a customer and fetched by our servers: left unchecked it would let anyone make us
call our own metadata service, database or admin ports (SSRF). The URL is checked when it is
registered and again, on every resolved address, before every delivery.

Secrets are needed in the clear to sign, so they are sealed (AES-GCM) rather than hashed,
under a key derived from the server keys; every server key is tried when opening one, so a
server key can be rotated without losing endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets as random_secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import yarl

from penguinmails import secrets as secrets_at_rest
from penguinmails.config import Settings
from penguinmails.queries import load
from penguinmails.secrets import server_keys

SQL = load("penguinmails", "sql/webhooks.sql")

SECRET_PREFIX = "whsec_"
# Every event type the system records today; subscriptions may also name future types, a
# prefix pattern such as "email.*", or "*" for everything.
EVENT_TYPES = (
    "email.sent",
    "email.delivered",
    "email.deferred",
    "email.bounced",
    "email.suppressed",
    "email.failed",
    "email.opened",
    "email.clicked",
    "email.unsubscribed",
    "email.complained",
    "campaign.completed",
    "webhook.disabled",
)
_EVENT_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
MAX_URL_LENGTH = 2048
ROTATION_OVERLAP_SECONDS = 24 * 3600.0

_SEAL_AAD = b"penguinmails:webhook-secret"


class InvalidEndpoint(ValueError):
    """A request to store an endpoint that cannot be accepted; names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class UnsafeTarget(ValueError):
    """A URL whose host is, or resolves to, an address we must not connect to."""


# ---------------------------------------------------------------------------------------------
# The address guard


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
        raise InvalidEndpoint("url", f"refused: {exc}") from None
    return str(parsed)


# ---------------------------------------------------------------------------------------------
# Secrets


def generate_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks format."""
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(32)).decode("ascii")


def check_secret(secret: str) -> str:
    if not 16 <= len(secret) <= 256 or not secret.isascii() or not secret.isprintable():
        raise InvalidEndpoint("secret", "must be 16 to 256 printable ASCII characters")
    if any(c.isspace() for c in secret):
        raise InvalidEndpoint("secret", "must not contain whitespace")
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEndpoint("secret", "a whsec_ secret must be base64") from None
        if not 24 <= len(key) <= 64:
            raise InvalidEndpoint("secret", "a whsec_ secret must hold 24 to 64 bytes")
    return secret


def seal(secret: str, keys: Sequence[bytes]) -> bytes:
    """Encrypt a webhook secret with the newest server key (penguinmails.secrets.seal)."""
    return secrets_at_rest.seal(keys, secret.encode("utf-8"), _SEAL_AAD)


def unseal(blob: bytes, keys: Sequence[bytes]) -> str:
    """Decrypt with whichever server key sealed it; ValueError if none did."""
    return secrets_at_rest.unseal(keys, blob, _SEAL_AAD).decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Signatures


def standard_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks derives: the base64 part of whsec_..., else the bytes."""
    if secret.startswith(SECRET_PREFIX):
        body = secret[len(SECRET_PREFIX) :]
        return base64.b64decode(body + "=" * (-len(body) % 4))
    return secret.encode("utf-8")


def signature_headers(
    message_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """Both signatures for one request.

    `webhook-signature` carries one `v1,<base64>` per secret (the current one first, then
    one still valid during a rotation), space separated as the standard asks;
    `X-PenguinMails-Signature` is the HMAC of the raw body under the current secret string.
    """
    if not secrets:
        raise ValueError("at least one secret is required")
    signed = f"{message_id}.{timestamp}.".encode() + body
    standard = " ".join(
        "v1,"
        + base64.b64encode(hmac.new(standard_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )
    simple = hmac.new(secrets[0].encode("utf-8"), body, hashlib.sha256).hexdigest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
        "X-PenguinMails-Signature": f"sha256={simple}",
    }


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as shown to its owner: everything but the secret."""

    id: int
    tenant_id: int
    url: str
    description: str
    events: list[str]
    active: bool
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Endpoint:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def check_events(events: Sequence[str] | None) -> list[str]:
    """Subscribed event types, deduplicated in order; empty means every event."""
    if events is None:
        return []
    if isinstance(events, str) or len(events) > 64:
        raise InvalidEndpoint("events", "must be a list of at most 64 event types")
    out: list[str] = []
    for i, name in enumerate(events):
        if not isinstance(name, str) or not _EVENT_PATTERN.match(name):
            raise InvalidEndpoint(f"events[{i}]", "must be an event type such as email.opened")
        if name not in out:
            out.append(name)
    return out


Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def create_endpoint(
    conn: Conn,
    tenant_id: int,
    url: str,
    events: Sequence[str] | None = None,
    secret: str | None = None,
    *,
    settings: Settings,
    description: str = "",
) -> tuple[Endpoint, str]:
    """Store a new endpoint; returns it and its secret, which is shown this once."""
    checked_url = await validate_url(url, allow_private=settings.webhooks.allow_private_targets)
    subscribed = check_events(events)
    secret = generate_secret() if secret is None else check_secret(secret)
    if len(description) > 500:
        raise InvalidEndpoint("description", "must be at most 500 characters")
    row = await conn.fetchrow(
        SQL["insert_endpoint"],
        tenant_id,
        checked_url,
        description,
        subscribed,
        seal(secret, server_keys(settings)),
    )
    assert row is not None
    return Endpoint.from_row(row), secret


async def list_endpoints(conn: Conn, tenant_id: int) -> list[Endpoint]:
    return [Endpoint.from_row(r) for r in await conn.fetch(SQL["list_endpoints"], tenant_id)]


async def get_endpoint(conn: Conn, tenant_id: int, endpoint_id: int) -> Endpoint | None:
    row = await conn.fetchrow(SQL["get_endpoint"], tenant_id, endpoint_id)
    return Endpoint.from_row(row) if row else None


async def update_endpoint(
    conn: asyncpg.Connection,
    tenant_id: int,
    endpoint_id: int,
    *,
    settings: Settings,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
    active: bool | None = None,
) -> Endpoint | None:
    """Change what is given (None keeps a field); None when there is no such endpoint.

    Deactivating cancels the endpoint's pending deliveries in the same transaction;
    re-activating clears its failure record.
    """
    if url is not None:
        url = await validate_url(url, allow_private=settings.webhooks.allow_private_targets)
    subscribed = None if events is None else check_events(events)
    if description is not None and len(description) > 500:
        raise InvalidEndpoint("description", "must be at most 500 characters")
    async with conn.transaction():
        row = await conn.fetchrow(
            SQL["update_endpoint"], tenant_id, endpoint_id, url, subscribed, description, active
        )
        if row is not None and active is False:
            await conn.execute(SQL["cancel_pending_deliveries"], endpoint_id, "endpoint disabled")
    return Endpoint.from_row(row) if row else None


async def delete_endpoint(conn: Conn, tenant_id: int, endpoint_id: int) -> bool:
    """Delete an endpoint and its outbox rows; False when there was no such endpoint."""
    return await conn.fetchval(SQL["delete_endpoint"], tenant_id, endpoint_id) is not None


async def rotate_secret(
    conn: Conn,
    tenant_id: int,
    endpoint_id: int,
    *,
    settings: Settings,
    secret: str | None = None,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
) -> str | None:
    """Give an endpoint a new secret (returned, shown once); None when there is no such endpoint.

    For `overlap_seconds` requests carry a signature under the old secret too, so a receiver
    can deploy the new one without rejecting anything in between.
    """
    secret = generate_secret() if secret is None else check_secret(secret)
    found = await conn.fetchval(
        SQL["rotate_secret"],
        tenant_id,
        endpoint_id,
        seal(secret, server_keys(settings)),
        overlap_seconds,
    )
    return secret if found is not None else None


async def list_deliveries(
    conn: Conn, tenant_id: int, endpoint_id: int, *, limit: int = 50, before: int | None = None
) -> list[dict[str, Any]]:
    """Recent deliveries of an endpoint, newest first; `before` pages on by delivery id."""
    rows = await conn.fetch(SQL["list_deliveries"], tenant_id, endpoint_id, before, limit)
    return [dict(r) for r in rows]
