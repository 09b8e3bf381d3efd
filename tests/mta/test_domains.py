"""Sending domains: keys generated, sealed at rest, printed as DNS records, cached for signing."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest
from cryptography.hazmat.primitives import serialization

from mta import dkim
from mta.domains import DomainError, KeyCache, KeyUnavailable, add_domain, show_domain
from penguinmails.messages import ensure_tenant


def record_value(record: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', record))


async def test_add_prints_the_record_and_show_prints_it_again(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        added = await add_domain(conn, settings, "News.Acme.TEST.", tenant="acme", selector="s1")
        shown = await show_domain(conn, "news.acme.test")
    assert added == shown
    [record] = added
    assert record.startswith("s1._domainkey.news.acme.test. IN TXT ")
    assert record_value(record).startswith("v=DKIM1; k=rsa; p=MII")
    row = await pool.fetchrow("SELECT * FROM sending_domains")
    assert row["domain"] == "news.acme.test" and row["algorithm"] == "rsa-sha256"
    tenant = await pool.fetchval("SELECT name FROM tenants WHERE id = $1", row["tenant_id"])
    assert tenant == "acme"  # created on first use


async def test_private_keys_are_sealed_at_rest(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", algorithm="both")
    for row in await pool.fetch("SELECT * FROM sending_domains"):
        blob = bytes(row["private_key"])
        assert b"PRIVATE KEY" not in blob
        with pytest.raises(ValueError):
            serialization.load_der_private_key(blob, None)


async def test_both_algorithms_get_a_selector_each(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        records = await add_domain(
            conn, settings, "acme.test", tenant="acme", selector="pm1", algorithm="both"
        )
    assert [r.split(" ")[0] for r in records] == [
        "pm1._domainkey.acme.test.",
        "pm1-ed25519._domainkey.acme.test.",
    ]
    assert "k=rsa" in record_value(records[0]) and "k=ed25519" in record_value(records[1])
    cache = KeyCache(pool, settings)
    keys = await cache.keys_for("acme.test", await tenant_id(pool, "acme"))
    assert [k.algorithm for k in keys] == [dkim.RSA, dkim.ED25519]


async def tenant_id(pool, name: str) -> int:
    return await pool.fetchval("SELECT id FROM tenants WHERE name = $1 AND mode = 'live'", name)


@pytest.mark.parametrize(
    ("domain", "kwargs", "message"),
    [
        ("not a domain", {}, "not a domain name"),
        ("localhost", {}, "not a domain name"),
        ("acme.test", {"selector": "bad selector"}, "not a valid selector"),
        ("acme.test", {"algorithm": "dsa"}, "unknown algorithm"),
    ],
)
async def test_bad_requests_are_refused(pool, make_settings, domain, kwargs, message):
    async with pool.acquire() as conn:
        with pytest.raises(DomainError, match=message):
            await add_domain(conn, make_settings(), domain, tenant="acme", **kwargs)


async def test_a_domain_belongs_to_one_tenant_and_a_selector_is_used_once(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
        with pytest.raises(DomainError, match="already has a key with selector s1"):
            await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
        with pytest.raises(DomainError, match="another tenant"):
            await add_domain(conn, settings, "acme.test", tenant="rival", selector="s2")
        with pytest.raises(DomainError, match="not a sending domain"):
            await show_domain(conn, "other.test")


async def test_a_new_selector_rotates_the_signing_key(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="old")
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="new")
        assert len(await show_domain(conn, "acme.test")) == 2  # both stay published
    keys = await KeyCache(pool, settings).keys_for("acme.test", await tenant_id(pool, "acme"))
    assert [k.selector for k in keys] == ["new"]


async def test_server_key_rotation_keeps_dkim_keys_readable(pool, make_settings):
    async with pool.acquire() as conn:
        await add_domain(conn, make_settings(), "acme.test", tenant="acme")
    acme = await tenant_id(pool, "acme")
    rotated = make_settings(security={"secret_keys": ["test-key-two", "test-key-one"]})
    assert len(await KeyCache(pool, rotated).keys_for("acme.test", acme)) == 1
    lost = make_settings(security={"secret_keys": ["test-key-two"]})
    with pytest.raises(KeyUnavailable, match="no configured server key"):
        await KeyCache(pool, lost).keys_for("acme.test", acme)


async def test_a_sealed_key_cannot_be_moved_to_another_row(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme", selector="s1")
        await add_domain(conn, settings, "other.test", tenant="acme", selector="s1")
    await pool.execute(
        "UPDATE sending_domains SET private_key = "
        "(SELECT private_key FROM sending_domains WHERE domain = 'acme.test') "
        "WHERE domain = 'other.test'"
    )
    with pytest.raises(KeyUnavailable):
        await KeyCache(pool, settings).keys_for("other.test", await tenant_id(pool, "acme"))


async def test_the_cache_reads_once_per_ttl_and_once_for_concurrent_misses(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
    acme = await tenant_id(pool, "acme")
    now = [1000.0]
    cache = KeyCache(pool, settings, ttl=60.0, clock=lambda: now[0])
    results = await asyncio.gather(*(cache.keys_for("acme.test", acme) for _ in range(50)))
    assert cache.loads == 1 and all(len(r) == 1 for r in results)
    for _ in range(100):
        await cache.keys_for("acme.test", acme)
    assert cache.loads == 1
    other = await ensure_tenant(pool, "other")
    assert await cache.keys_for("acme.test", other) == []  # another tenant: unsigned
    # The account's test mode signs with the same keys (the domain is the account's).
    acme_test = await ensure_tenant(pool, "acme", mode="test")
    assert await cache.keys_for("acme.test", acme_test) == results[0]
    assert await cache.keys_for("unknown.test", acme) == []
    assert await cache.keys_for("unknown.test", acme) == []
    assert cache.loads == 2
    now[0] += 61
    await cache.keys_for("acme.test", acme)
    assert cache.loads == 3


async def test_a_failed_refresh_keeps_signing_with_the_loaded_keys(pool, make_settings):
    settings = make_settings()
    async with pool.acquire() as conn:
        await add_domain(conn, settings, "acme.test", tenant="acme")
    acme = await tenant_id(pool, "acme")
    now = [0.0]
    cache = KeyCache(pool, settings, ttl=60.0, clock=lambda: now[0])
    [key] = await cache.keys_for("acme.test", acme)
    await pool.execute("ALTER TABLE sending_domains RENAME TO sending_domains_gone")
    now[0] += 61
    assert await cache.keys_for("acme.test", acme) == [key]
    with pytest.raises(KeyUnavailable):
        await cache.keys_for("new.test", acme)


async def test_the_cli_adds_and_shows(database_url, tmp_path):
    config = tmp_path / "pm.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[paths]\ndata_dir = "{tmp_path}"\n'
        '[security]\nsecret_keys = ["cli-key"]\n[logging]\nformat = "text"\nlevel = "ERROR"\n'
    )

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "penguinmails.cli",
            "--config",
            str(config),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await run(
        "domains",
        "add",
        "acme.test",
        "--tenant",
        "acme",
        "--selector",
        "cli",
        "--algorithm",
        "ed25519",
    )
    assert code == 0
    assert out.strip().startswith('cli._domainkey.acme.test. IN TXT "v=DKIM1; k=ed25519; p=')
    code, shown, _ = await run("domains", "show", "acme.test")
    assert code == 0 and shown == out
    code, _, err = await run("domains", "show", "nope.test")
    assert code == 1 and "not a sending domain" in err
