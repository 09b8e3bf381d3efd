"""MTA-STS policies: parsed as RFC 8461 writes them, fetched over verified HTTPS from a real
server named through a real DNS server, and kept (in the database) whenever a fresh one
cannot be had, so blocking DNS or the fetch never switches a policy off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import dns.asyncresolver
import dns.nameserver
import pytest
import trustme
from aiohttp import web

from mta.mtasts import MtaSts, PolicyError, parse_policy, parse_txt
from penguinmails.config import Settings, split_hostport
from tests.dns_server import NXDOMAIN, SERVFAIL, DNSServer

NOW = datetime(2026, 11, 29, tzinfo=UTC)
POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.dest.test\r\nmx: *.backup.test\r\n"
    "max_age: 86400\r\n"
)


def test_a_policy_reads_as_the_rfc_writes_it() -> None:
    policy = parse_policy(POLICY, "20261129", NOW)
    assert policy.mode == "enforce" and policy.max_age == 86400 and policy.enforced
    assert policy.mx == ("mx1.dest.test", "*.backup.test")
    assert policy.matches("MX1.dest.test.") and policy.matches("a.backup.test")
    # A wildcard stands for exactly one label.
    assert not policy.matches("backup.test") and not policy.matches("a.b.backup.test")
    assert not policy.matches("mx2.dest.test")
    unknown_keys_and_lf = "version: STSv1\nmode: testing\nmx: mx.t.test\nmax_age: 99999999999\n"
    with pytest.raises(PolicyError):  # max_age longer than ten digits
        parse_policy(unknown_keys_and_lf, "x", NOW)
    capped = parse_policy(
        "version: STSv1\nfoo: bar\nmode: testing\nmx: mx.t.test\nmax_age: 40000000\n", "x", NOW
    )
    assert capped.max_age == 31_557_600 and capped.mode == "testing"
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n", "x", NOW).mx == ()


@pytest.mark.parametrize(
    "text",
    [
        "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
        "mode: enforce\nmx: a.test\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",  # enforce with no mx
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
        "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age 1\n",
        "<html>not a policy</html>",
    ],
)
def test_a_policy_that_breaks_the_rfc_is_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, "x", NOW)


def test_the_txt_record_gives_the_id_of_exactly_one_policy() -> None:
    assert parse_txt(["v=STSv1; id=20261129T1;"]) == "20261129T1"
    assert parse_txt(["some other record", "v=STSv1;id=abc"]) == "abc"
    for bad in (
        [],
        ["v=STSv1; id=a;", "v=STSv1; id=b;"],  # two: no policy
        ["v=STSv1; id=;"],
        ["v=STSv1; id=has-dash;"],
        ["v=STSv1; id=" + "a" * 33],
        ["v=STSv2; id=abc"],
    ):
        with pytest.raises(PolicyError):
            parse_txt(bad)


class PolicyHost:
    """`https://mta-sts.<domain>/.well-known/mta-sts.txt` on loopback, with a certificate
    from a test CA; what it serves can change, and it counts its requests."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.cert = cert
        self.body = POLICY
        self.status = 200
        self.content_type = "text/plain"
        self.location: str | None = None
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.requests += 1
        headers = {"Location": self.location} if self.location else None
        return web.Response(
            text=self.body, status=self.status, content_type=self.content_type, headers=headers
        )

    async def start(self) -> PolicyHost:
        import ssl

        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def policy_host(test_ca: trustme.CA) -> AsyncIterator[PolicyHost]:
    host = await PolicyHost(test_ca.issue_cert("mta-sts.dest.test")).start()
    yield host
    await host.stop()


@pytest.fixture
async def make_sts(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    dns_server: DNSServer,
    policy_host: PolicyHost,
    test_ca: trustme.CA,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., MtaSts]]:
    made: list[MtaSts] = []

    def make(**mta: Any) -> MtaSts:
        ca_file = tmp_path / "ca.pem"
        test_ca.cert_pem.write_to_path(str(ca_file))
        settings = make_settings(
            mta={
                "dns_servers": [dns_server.address],
                "mta_sts_port": policy_host.port,
                "tls_ca_file": str(ca_file),
                **mta,
            }
        ).mta
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_hostport(dns_server.address))]
        resolver.lifetime = 2.0
        sts = MtaSts(pool, settings, resolver)
        made.append(sts)
        return sts

    yield make
    for sts in made:
        await sts.close()


def _zone(policy_id: str | None) -> dict[str, Any]:
    zone: dict[str, Any] = {"mta-sts.dest.test": {"A": ["127.0.0.1"]}}
    zone["_mta-sts.dest.test"] = {"TXT": [f'"v=STSv1; id={policy_id};"']} if policy_id else NXDOMAIN
    return zone


async def test_a_policy_is_fetched_once_kept_in_the_database_and_refetched_on_a_new_id(
    make_sts: Callable[..., MtaSts],
    dns_server: DNSServer,
    policy_host: PolicyHost,
    pool: asyncpg.Pool,
) -> None:
    dns_server.load(_zone("one"))
    sts = make_sts()
    policy = await sts.policy("Dest.Test")
    assert policy is not None and policy.mode == "enforce" and policy.id == "one"
    assert await sts.policy("dest.test") == policy and policy_host.requests == 1
    row = await pool.fetchrow("SELECT policy_id, mode, mx FROM mta_sts_policies")
    assert dict(row) == {
        "policy_id": "one",
        "mode": "enforce",
        "mx": ["mx1.dest.test", "*.backup.test"],
    }

    # Another process (a fresh object) with the same TXT id uses the stored policy.
    assert (await make_sts().policy("dest.test")) == policy and policy_host.requests == 1

    # A new id: the new policy is fetched and replaces the old.
    dns_server.load(_zone("two"))
    policy_host.body = POLICY.replace("enforce", "testing")
    fresh = await make_sts().policy("dest.test")
    assert fresh is not None and fresh.id == "two" and fresh.mode == "testing"
    assert policy_host.requests == 2


async def test_blocking_dns_or_the_fetch_does_not_switch_a_cached_policy_off(
    make_sts: Callable[..., MtaSts], dns_server: DNSServer, policy_host: PolicyHost
) -> None:
    dns_server.load(_zone("one"))
    first = await make_sts().policy("dest.test")
    assert first is not None and first.id == "one"

    # A new id, but the policy host fails in each way: the cached policy stands.
    dns_server.load(_zone("two"))
    for change in (
        {"status": 404},
        {"status": 200, "content_type": "text/html"},
        {"status": 200, "content_type": "text/plain", "body": "version: STSv1\nmode: bogus\n"},
        {"status": 301, "location": "https://elsewhere.test/policy", "body": POLICY},
    ):
        for key, value in change.items():
            setattr(policy_host, key, value)
        assert (await make_sts().policy("dest.test")) == first, change
    assert policy_host.requests == 5  # the redirect was not followed

    dns_server.load({"_mta-sts.dest.test": NXDOMAIN})  # the TXT record removed (or spoofed)
    kept = await make_sts().policy("dest.test")
    assert kept == first and kept is not None and kept.enforced
    dns_server.load({"_mta-sts.dest.test": SERVFAIL})
    assert (await make_sts().policy("dest.test")) == kept


async def test_no_record_an_untrusted_certificate_or_mta_sts_off_means_no_policy(
    make_sts: Callable[..., MtaSts], dns_server: DNSServer, policy_host: PolicyHost, tmp_path: Path
) -> None:
    dns_server.load(_zone("one"))
    assert await make_sts().policy("plain.test") is None  # no _mta-sts record at all
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    assert await make_sts(tls_ca_file=str(other_ca)).policy("dest.test") is None
    assert policy_host.requests == 0  # the TLS handshake failed before any request
    assert await make_sts(mta_sts=False).policy("dest.test") is None
    assert await make_sts().policy("dest.test") is not None
