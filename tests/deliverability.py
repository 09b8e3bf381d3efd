"""A sending domain published correctly in the test DNS server (tests/dns_server.py), with
an HTTPS front for its tracking domain, and settings whose checks look there: shared by the
deliverability checks' tests and the API's."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from mta.domains import add_domain
from penguinmails.config import Settings
from tests.dns_server import DNSServer

DOMAIN = "acme.test"
EGRESS = "192.0.2.10"


def record_value(record: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', record))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_site(ca: trustme.CA) -> AsyncIterator[int]:
    """The tracking domain's HTTPS front: a certificate for links.acme.test."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(f"links.{DOMAIN}").configure_cert(context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def deliv_settings(
    make_settings: Callable[..., Settings],
    dns_server: DNSServer,
    tls_site: int,
    ca: trustme.CA,
    tmp_path: Path,
) -> Settings:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return make_settings(
        mta={
            "hostname": "mta.mail.test",
            "bounce_domain": "bounces.mail.test",
            "dns_servers": [dns_server.address],
            "dns_timeout": 2.0,
            "tls_ca_file": str(ca_file),
            "sources": {"one": {"address": EGRESS, "ehlo": "mta.mail.test"}},
            "require_verified_domains": True,
        },
        tracker={"base_url": "https://track.mail.test", "https_port": tls_site},
    )


async def publish(pool: Any, settings: Settings, dns_server: DNSServer) -> str:
    """Add the domain, and publish everything it needs; returns the DKIM record's value."""
    async with pool.acquire() as conn:
        [record] = await add_domain(conn, settings, DOMAIN, tenant="acme", selector="s1")
    value = record_value(record)
    dns_server.load(
        {
            f"s1._domainkey.{DOMAIN}": {"TXT": [f'"{value[:200]}" "{value[200:]}"']},
            f"_dmarc.{DOMAIN}": {"TXT": ['"v=DMARC1; p=quarantine; rua=mailto:d@acme.test"']},
            f"bounces.{DOMAIN}": {"CNAME": ["bounces.mail.test."]},
            "bounces.mail.test": {
                "MX": ["10 mx.mail.test."],
                "TXT": ['"v=spf1 include:_spf.mail.test -all"'],
            },
            "_spf.mail.test": {"TXT": ['"v=spf1 a:mta.mail.test ip4:198.51.100.0/24 -all"']},
            "mta.mail.test": {"A": [EGRESS]},
            "10.2.0.192.in-addr.arpa": {"PTR": ["mta.mail.test."]},
            f"links.{DOMAIN}": {"CNAME": ["track.mail.test."]},
            "track.mail.test": {"A": ["127.0.0.1"]},
        }
    )
    return value
