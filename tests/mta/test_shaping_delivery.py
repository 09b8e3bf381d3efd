"""Shaping through running workers, counted at the peer: a site's connection cap holds across
two MTA processes for forty domains sharing one MX, a provider's throttling reply suspends its
site for the rule's duration, and a source's address and EHLO name are what the peer sees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg

from penguinmails.messages import Draft, enqueue, ensure_tenant
from tests.dns_server import DNSServer
from tests.helpers import queue_messages, wait_for
from tests.smtp_peer import SMTPPeer


def _shared_mx(dns_server: DNSServer, domains: list[str]) -> None:
    zone: dict[str, Any] = {"mx.site.test": {"A": ["127.0.0.1"]}}
    for domain in domains:
        zone[domain] = {"MX": ["10 mx.site.test."]}
    dns_server.load(zone)


def _rules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shaping.toml"
    path.write_text(text)
    return str(path)


def _settings(make_settings: Any, dns_server: DNSServer, peer: SMTPPeer, **mta: Any) -> Any:
    return make_settings(
        mta={
            "dns_servers": [dns_server.address],
            "dns_timeout": 2.0,
            "mx_port": peer.port,
            "mta_sts": False,
            **mta,
        }
    )


async def _sent(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'"))


async def test_forty_domains_on_one_mx_share_the_site_cap_across_two_processes(
    pool: asyncpg.Pool,
    make_settings: Any,
    smtp_peer: SMTPPeer,
    dns_server: DNSServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    domains = [f"customer{i}.test" for i in range(40)]
    _shared_mx(dns_server, domains)
    # Each domain alone would allow 10 connections; their site allows 3 in all.
    settings = _settings(
        make_settings,
        dns_server,
        smtp_peer,
        shaping_file=_rules(tmp_path, "[site]\nmax_connections = 3\n"),
    )
    smtp_peer.fault("DATA", delay=0.05)  # slow enough that connections overlap
    await queue_messages(pool, [f"user{n}@{d}" for d in domains for n in range(5)])
    await start_worker(settings, owner="one")
    await start_worker(settings, owner="two")
    await wait_for(lambda: _sent(pool), timeout=60)
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) = 200 FROM messages WHERE status = 'sent'"),
        timeout=60,
    )
    assert len(smtp_peer.received) == 200
    assert 1 < smtp_peer.state.max_open <= 3
    sites = await pool.fetch("SELECT DISTINCT site FROM domain_sites")
    assert [r["site"] for r in sites] == ["site:mx.site.test"]


async def test_a_provider_s_deferral_suspends_its_site_then_sending_resumes(
    pool: asyncpg.Pool,
    make_settings: Any,
    smtp_peer: SMTPPeer,
    dns_server: DNSServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    domains = ["a.test", "b.test"]
    _shared_mx(dns_server, domains)
    rules = _rules(
        tmp_path,
        '[providers.lab]\nmx_suffixes = ["site.test"]\n\n'
        '[[automation]]\nname = "lab-deferred"\nprovider = "lab"\ncode = 421\n'
        'text = \'\\[TSS04\\]\'\naction = "suspend"\nscope = "provider"\nduration = 3\n',
    )
    settings = _settings(make_settings, dns_server, smtp_peer, shaping_file=rules)
    smtp_peer.fault("MAIL", 421, "4.7.0 [TSS04] Messages temporarily deferred", times=1)
    await queue_messages(pool, [f"u{i}@{d}" for d in domains for i in range(10)])
    started = time.monotonic()
    await start_worker(settings)
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) = 20 FROM messages WHERE status = 'sent'"),
        timeout=30,
    )
    mail_at = smtp_peer.state.mail_at
    refused = mail_at[0]
    # What was already on the wire when the refusal came may still arrive within moments;
    # after that, nothing for the rule's 3 seconds, then everything.
    during = [t for t in mail_at if refused + 0.5 < t < refused + 2.9]
    after = [t for t in mail_at if t >= refused + 2.9]
    assert during == [] and after, (during, len(after))
    assert time.monotonic() - started >= 3
    [event] = await pool.fetch("SELECT data FROM events WHERE type = 'delivery.throttled'")
    assert event["data"]["scope"] == "provider:lab" and event["data"]["rule"] == "lab-deferred"


async def test_a_source_delivers_from_its_address_with_its_name_for_its_pool_s_tenants(
    pool: asyncpg.Pool,
    make_settings: Any,
    smtp_peer: SMTPPeer,
    start_worker: Any,
) -> None:
    settings = make_settings(
        mta={
            "routes": {"dest.test": smtp_peer.hop},
            "sources": {
                "shared": {"address": "127.0.0.1", "ehlo": "out1.example.test"},
                "two": {"address": "127.0.0.2", "ehlo": "out2.acme.test"},
            },
            "pools": {"dedicated": {"sources": {"two": 1}}, "common": {"sources": {"shared": 1}}},
            "default_pool": "common",
            "tenant_pools": {"acme": "dedicated"},
        }
    )
    await queue_messages(pool, ["ann@dest.test", "bob@dest.test"])  # tenant acme
    other = await ensure_tenant(pool, "globex")
    await enqueue(
        pool,
        other,
        Draft(from_email="a@globex.test", subject="S", text="T", recipients=["cy@dest.test"]),
    )
    await start_worker(settings)
    await wait_for(lambda: len(smtp_peer.received) == 3, timeout=20)
    seen = {r.rcpt_tos[0]: (r.peer, r.helo) for r in smtp_peer.received}
    assert seen == {
        "ann@dest.test": ("127.0.0.2", "out2.acme.test"),
        "bob@dest.test": ("127.0.0.2", "out2.acme.test"),
        "cy@dest.test": ("127.0.0.1", "out1.example.test"),
    }


async def test_an_enforced_mta_sts_policy_needs_a_certificate_valid_for_the_mx(
    pool: asyncpg.Pool,
    make_settings: Any,
    dns_server: DNSServer,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    import ssl

    import trustme

    from tests.mta.test_mtasts import PolicyHost

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # One receiver, known by two MX names; its certificate is for one of them only.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.good.test").configure_cert(context)
    peer = await SMTPPeer(tls_context=context).start()
    policy_host = await PolicyHost(ca.issue_cert("mta-sts.good.test", "mta-sts.bad.test")).start()
    policy_host.body = (
        "version: STSv1\nmode: enforce\nmx: *.good.test\nmx: *.bad.test\nmax_age: 600\n"
    )
    try:
        zone: dict[str, Any] = {}
        for name in ("good", "bad"):
            zone[f"{name}.test"] = {"MX": [f"10 mx.{name}.test."]}
            zone[f"mx.{name}.test"] = {"A": ["127.0.0.1"]}
            zone[f"mta-sts.{name}.test"] = {"A": ["127.0.0.1"]}
            zone[f"_mta-sts.{name}.test"] = {"TXT": ['"v=STSv1; id=1;"']}
        dns_server.load(zone)
        settings = _settings(
            make_settings,
            dns_server,
            peer,
            mta_sts=True,
            mta_sts_port=policy_host.port,
            tls_ca_file=str(ca_file),
        )
        await queue_messages(pool, ["ann@good.test", "bob@bad.test"])
        await start_worker(settings)
        await wait_for(
            lambda: pool.fetchval(
                "SELECT count(*) = 2 FROM messages WHERE status IN ('sent', 'deferred')"
            ),
            timeout=20,
        )
        rows = {
            r["recipient"]: r
            for r in await pool.fetch("SELECT recipient, status, last_reply FROM messages")
        }
        assert rows["ann@good.test"]["status"] == "sent"
        assert rows["bob@bad.test"]["status"] == "deferred"
        assert (
            "MTA-STS policy enforced, but the certificate of mx.bad.test does not verify"
            in (rows["bob@bad.test"]["last_reply"])
        )
        [received] = peer.received
        assert received.rcpt_tos == ["ann@good.test"] and received.tls
        delivered = await pool.fetchval("SELECT data FROM events WHERE type = 'email.delivered'")
        assert delivered["tls"]["verified"] is True and delivered["tls"]["mta_sts"] == "enforce"
        assert delivered["tls"]["version"].startswith("TLSv1.")
    finally:
        await peer.stop()
        await policy_host.stop()
