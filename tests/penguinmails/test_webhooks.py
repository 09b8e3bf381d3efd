"""penguinmails.webhooks: endpoint storage, sealed secrets, signatures and the address guard."""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Callable

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from penguinmails.config import Settings
from penguinmails.messages import ensure_tenant
from penguinmails.webhooks import InvalidEndpoint
from penguinmails.webhooks.endpoints import (
    EVENT_TYPES,
    check_events,
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_endpoints,
    rotate_secret,
    update_endpoint,
)
from penguinmails.webhooks.guard import (
    UnsafeTarget,
    check_url,
    forbidden_reason,
    resolve_checked,
    validate_url,
)
from penguinmails.webhooks.signing import generate_secret, seal, signature_headers, unseal


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(webhooks={"allow_private_targets": True})


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> int:
    return await ensure_tenant(pool, "acme")


REFUSED_URLS = [
    "http://127.0.0.1/hook",
    "http://127.1/hook",  # short form
    "http://2130706433/hook",  # decimal
    "http://0x7f000001/hook",  # hex
    "http://0177.0.0.1/hook",  # octal
    "http://127.0.0.1./hook",  # trailing dot
    "http://0.0.0.0:8080/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:8.8.8.8]/",  # IPv4-mapped, even of a public address
    "http://[64:ff9b::7f00:1]/",  # NAT64
    "http://[2002:7f00:1::]/",  # 6to4
    "http://[2001:0:4136:e378::1]/",  # Teredo
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # shared address space (CGNAT)
    "http://100.100.100.200/",  # Alibaba metadata, in CGNAT space
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://168.63.129.16/",  # Azure wireserver: public, but metadata
    "http://[fd00:ec2::254]/",  # AWS IPv6 metadata
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",  # multicast
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://198.18.0.1/",
    "http://localhost:8080/",
    "http://api.localhost/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_private_and_special_targets_are_refused(url):
    with pytest.raises(InvalidEndpoint, match="refused"):
        await validate_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/x"])
async def test_operators_may_allow_private_targets(url):
    assert await validate_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/hook",
        "http:///x",
        "https://user:pw@example.com/",
        "https://example.com/a b",
        "https://example.com/#frag",
        "javascript:alert(1)",
    ],
)
async def test_malformed_urls_are_invalid(url):
    with pytest.raises(InvalidEndpoint) as caught:
        await validate_url(url, allow_private=False)
    assert caught.value.field == "url"


async def test_public_literal_addresses_pass():
    assert check_url("https://93.184.216.34/hook").host == "93.184.216.34"
    assert check_url("https://[2606:2800:220:1:248:1893:25c8:1946]/").host
    assert forbidden_reason(ipaddress.ip_address("8.8.8.8")) is None


async def test_names_resolving_to_loopback_are_refused():
    with pytest.raises(UnsafeTarget, match="loopback"):
        await resolve_checked("localhost", 80)


async def test_secret_format_and_sealing():
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret

    old, new = b"old-server-key", b"new-server-key"
    blob = seal(secret, [old])
    assert secret.encode() not in blob
    assert unseal(blob, [new, old]) == secret  # server key rotated: the old one still opens
    with pytest.raises(ValueError):
        unseal(blob, [new])
    with pytest.raises(ValueError):
        unseal(blob[:-1] + bytes([blob[-1] ^ 1]), [old])  # tampered


def test_signatures_verify_with_the_reference_library_and_plain_hmac():
    import hashlib
    import hmac

    body = b'{"id":"evt_1","type":"email.opened","created":"2026-01-01T00:00:00.000Z","data":{}}'
    now = int(time.time())
    for secret in (generate_secret(), "a-plain-shared-secret-string"):
        headers = signature_headers("msg_1", now, body, [secret])
        key = secret if secret.startswith("whsec_") else secret.encode()
        Webhook(key).verify(body, headers)
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-PenguinMails-Signature"] == f"sha256={expected}"
        with pytest.raises(WebhookVerificationError):
            Webhook(key).verify(body + b" ", headers)
    # A stale timestamp is refused by receivers (5 minutes either way).
    stale = signature_headers("msg_1", now - 600, body, [generate_secret()])
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, stale)


def test_during_rotation_both_secrets_verify():
    old, new = generate_secret(), generate_secret()
    body = b"{}"
    headers = signature_headers("msg_9", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)


async def test_endpoint_lifecycle_is_scoped_to_the_tenant(pool, settings, tenant):
    other = await ensure_tenant(pool, "globex")
    endpoint, secret = await create_endpoint(
        pool,
        tenant,
        "http://127.0.0.1:9/hook",
        ["email.opened", "email.*", "email.opened"],
        settings=settings,
        description="CRM sync",
    )
    assert secret.startswith("whsec_")
    assert endpoint.events == ["email.opened", "email.*"]
    assert endpoint.active
    assert "secret" not in endpoint.model_dump()
    stored = await pool.fetchval(
        "SELECT secret_sealed FROM webhooks WHERE public_id = $1", endpoint.id
    )
    assert secret.encode() not in stored
    assert unseal(stored, [b"test-key-one"]) == secret

    assert [e.id for e in await list_endpoints(pool, tenant)] == [endpoint.id]
    assert await list_endpoints(pool, other) == []
    assert await get_endpoint(pool, other, endpoint.id) is None
    assert not await delete_endpoint(pool, other, endpoint.id)

    given, given_secret = await create_endpoint(
        pool, tenant, "http://127.0.0.1:9/b", None, "my-own-secret-1234", settings=settings
    )
    assert given_secret == "my-own-secret-1234" and given.events == []

    # One event waiting in the outbox for each of the two endpoints.
    await pool.execute("INSERT INTO events (tenant_id, type) VALUES ($1, 'email.opened')", tenant)
    outbox = (
        "SELECT w.public_id, d.status, d.last_error FROM webhook_deliveries d"
        " JOIN webhooks w ON w.id = d.webhook_id ORDER BY d.webhook_id"
    )
    async with pool.acquire() as conn:
        updated = await update_endpoint(
            conn, tenant, endpoint.id, settings=settings, events=["*"], active=False
        )
        assert updated is not None and updated.events == ["*"] and not updated.active
        # Switched off by its owner: its backlog is cancelled, the other endpoint's is not.
        assert [tuple(r) for r in await conn.fetch(outbox)] == [
            (endpoint.id, "cancelled", "endpoint disabled"),
            (given.id, "pending", None),
        ]
        # Re-activating clears a failure record (as the dispatcher leaves one when it disables
        # a failing endpoint); the cancelled backlog stays cancelled.
        await conn.execute(
            "UPDATE webhooks SET failing_since = now(), disabled_at = now(),"
            " disabled_reason = 'every attempt failed' WHERE public_id = $1",
            endpoint.id,
        )
        again = await update_endpoint(conn, tenant, endpoint.id, settings=settings, active=True)
        assert again is not None and again.active
        assert (again.failing_since, again.disabled_at, again.disabled_reason) == (None, None, None)
        assert (await conn.fetch(outbox))[0]["status"] == "cancelled"
        assert await update_endpoint(conn, other, endpoint.id, settings=settings) is None

    rotated = await rotate_secret(pool, tenant, endpoint.id, settings=settings)
    assert rotated is not None and rotated != secret
    row = await pool.fetchrow("SELECT * FROM webhooks WHERE public_id = $1", endpoint.id)
    assert unseal(row["secret_sealed"], [b"test-key-one"]) == rotated
    assert unseal(row["previous_secret_sealed"], [b"test-key-one"]) == secret
    assert await rotate_secret(pool, other, endpoint.id, settings=settings) is None
    # An overlap out of bounds (negative, or keeping a retired secret alive past a week) is
    # refused before anything changes: the secret in use stays.
    for overlap in (-1.0, 7 * 86400 + 1.0):
        with pytest.raises(InvalidEndpoint, match="between") as refused:
            await rotate_secret(
                pool, tenant, endpoint.id, settings=settings, overlap_seconds=overlap
            )
        assert refused.value.field == "overlap_seconds"
    row = await pool.fetchrow("SELECT * FROM webhooks WHERE public_id = $1", endpoint.id)
    assert unseal(row["secret_sealed"], [b"test-key-one"]) == rotated

    assert await delete_endpoint(pool, tenant, endpoint.id)
    assert await get_endpoint(pool, tenant, endpoint.id) is None


async def test_create_refuses_private_targets_unless_allowed(pool, make_settings, tenant):
    strict = make_settings()
    with pytest.raises(InvalidEndpoint, match="refused"):
        await create_endpoint(pool, tenant, "http://169.254.169.254/", settings=strict)
    assert await pool.fetchval("SELECT count(*) FROM webhooks") == 0


@pytest.mark.parametrize(
    ("events", "secret"),
    [
        (["Email.Opened"], None),
        (["email opened"], None),
        ("email.opened", None),
        ([], "short"),
        ([], "whsec_not base64!"),
        ([], "has whitespace in it ok"),
    ],
)
async def test_bad_events_and_secrets_are_invalid(pool, settings, tenant, events, secret):
    with pytest.raises(InvalidEndpoint):
        await create_endpoint(
            pool, tenant, "http://127.0.0.1:9/", events, secret, settings=settings
        )


def test_every_known_event_type_is_a_valid_subscription():
    assert check_events(list(EVENT_TYPES)) == list(EVENT_TYPES)
