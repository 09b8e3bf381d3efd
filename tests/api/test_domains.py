"""GET /api/v1/domains/{domain} (the DNS checks, account-scoped) and the door: live sends
from a domain failing DKIM or DMARC are refused with a 422 naming the domain and the check,
and allowed once DNS is fixed and the domain verifies again; test mode is never gated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from api.server import ApiServer
from penguinmails.config import Settings
from tests.deliverability import DOMAIN, publish
from tests.dns_server import DNSServer
from tests.helpers import Client, assert_error, wait_for


def message(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": f"hello@{DOMAIN}"},
        "to": "ann@dest.test",
        "subject": "Hi",
        "content": {"text": "Hello"},
    }
    body.update(changes)
    return body


async def test_checks_and_the_door(
    pool: asyncpg.Pool,
    deliv_settings: Settings,
    dns_server: DNSServer,
    start_api: Callable[..., Awaitable[ApiServer]],
    make_key: Callable[..., Awaitable[str]],
    http: aiohttp.ClientSession,
) -> None:
    await publish(pool, deliv_settings, dns_server)  # tenant acme owns acme.test
    server = await start_api(deliv_settings, reverify_domains=False)
    live = Client(http, server.url + "/api/v1", await make_key("acme", tier="enterprise"))
    test = live.with_key(await make_key("acme", tier="enterprise", test=True))
    other = live.with_key(await make_key("globex", tier="enterprise"))
    dns_server.set_records(f"_dmarc.{DOMAIN}", "TXT", ['"v=spf1 -all"'])  # no DMARC policy

    # Never verified: refused, and the answer says how to verify.
    refused = assert_error(await live.post("/emails/send", json=message()), 422, "VALIDATION_ERROR")
    assert refused["details"][0]["field"] == "from.email"
    assert f"{DOMAIN} has not been verified yet" in refused["details"][0]["message"]
    assert f"penguinmails domains verify {DOMAIN}" in refused["details"][0]["message"]

    # Checked: DMARC fails, with what was found, expected and the fix.
    reply = await live.get(f"/domains/{DOMAIN}")
    assert reply.status == 200, reply.body
    data = reply.data
    assert data["status"] == "fail" and data["sending_allowed"] is False
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["dkim:s1"]["status"] == "pass"
    assert checks["dmarc"]["status"] == "fail" and checks["dmarc"]["found"] == "no DMARC record"
    assert f"_dmarc.{DOMAIN}" in checks["dmarc"]["fix"]
    assert data["return_path_domain"] == f"bounces.{DOMAIN}"

    refused = assert_error(await live.post("/emails/send", json=message()), 422, "VALIDATION_ERROR")
    text = refused["details"][0]["message"]
    assert f"{DOMAIN} fails its DNS checks: dmarc (publish TXT _dmarc.{DOMAIN}" in text
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0  # nothing was queued

    # Test mode is not gated.
    assert (await test.post("/emails/send", json=message())).status == 202

    # Fixed, verified again: allowed.
    dns_server.set_records(f"_dmarc.{DOMAIN}", "TXT", ['"v=DMARC1; p=none"'])
    data = (await live.get(f"/domains/{DOMAIN}")).data
    assert data["status"] == "pass" and data["sending_allowed"] is True
    sent = await live.post("/emails/send", json=message())
    assert sent.status == 202, sent.body

    # Another account's domain, or none at all: not found.
    assert_error(await other.get(f"/domains/{DOMAIN}"), 404, "NOT_FOUND")
    assert_error(await live.get("/domains/nowhere.test"), 404, "NOT_FOUND")


async def test_the_gate_is_off_when_not_required(
    pool: asyncpg.Pool,
    deliv_settings: Settings,
    dns_server: DNSServer,
    start_api: Callable[..., Awaitable[ApiServer]],
    make_key: Callable[..., Awaitable[str]],
    http: aiohttp.ClientSession,
) -> None:
    await publish(pool, deliv_settings, dns_server)
    relaxed = deliv_settings.model_copy(
        update={"mta": deliv_settings.mta.model_copy(update={"require_verified_domains": False})}
    )
    server = await start_api(relaxed, reverify_domains=False)
    live = Client(http, server.url + "/api/v1", await make_key("acme", tier="enterprise"))
    assert (await live.post("/emails/send", json=message())).status == 202


async def test_the_api_process_verifies_domains_by_itself(
    pool: asyncpg.Pool,
    deliv_settings: Settings,
    dns_server: DNSServer,
    start_api: Callable[..., Awaitable[ApiServer]],
) -> None:
    """Where verified domains are required, the API's scheduler checks a domain added with
    `domains add` without anyone asking (its first pass runs at start)."""
    await publish(pool, deliv_settings, dns_server)
    await start_api(deliv_settings)
    await wait_for(
        lambda: pool.fetchval("SELECT sending_allowed FROM domain_verifications"), timeout=20
    )
    assert await pool.fetchval("SELECT status FROM domain_verifications") == "pass"
