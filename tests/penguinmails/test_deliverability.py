"""Sending domains' DNS checks against a real DNS server (tests/dns_server.py) and a real TLS
listener: a correctly published domain passes every check; each usual mistake fails with
its fix named; the result is stored, and a domain that stops passing records its event."""

from __future__ import annotations

import re
from typing import Any

import aiosmtplib
import orjson
import pytest

from inbound.server import InboundServer
from penguinmails.deliverability import (
    FAIL,
    PASS,
    Report,
    Reverifier,
    stored_keys,
    verify,
    verify_and_store,
)
from tests.deliverability import DOMAIN, EGRESS, publish
from tests.helpers import queue_messages, run_cli, wait_for
from tests.inbound.conftest import SentMessage, corpus, send
from tracker.server import Tracker


def by_name(report: Report) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


async def test_a_correctly_published_domain_passes_every_check(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    report = await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN))
    assert {c.name: c.status for c in report.checks} == {
        "dkim:s1": PASS,
        "spf": PASS,
        "dmarc": PASS,
        "return_path": PASS,
        "ptr:one": PASS,
        "tracking": PASS,
        "tracking_tls": PASS,
        "unsubscribe": PASS,
        "complaints": PASS,
    }
    assert report.status == PASS and report.sending_allowed
    checks = by_name(report)
    assert checks["spf"].subject == f"bounces.{DOMAIN}"  # where receivers check it
    assert "(2 lookups)" in checks["spf"].found  # include: and a: count; the first does not
    assert "honoured at once" in checks["unsubscribe"].expected


async def test_a_wrong_dkim_key_fails_and_names_the_record(pool, deliv_settings, dns_server):
    value = await publish(pool, deliv_settings, dns_server)
    wrong = value[:-8] + "AAAAAAAA"
    dns_server.set_records(f"s1._domainkey.{DOMAIN}", "TXT", [f'"{wrong[:200]}" "{wrong[200:]}"'])
    report = await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN))
    dkim = by_name(report)["dkim:s1"]
    assert dkim.status == FAIL and dkim.found == wrong
    assert dkim.expected == value
    assert f"publish TXT s1._domainkey.{DOMAIN}" in dkim.fix
    assert not report.sending_allowed


async def test_spf_missing_the_egress_address_fails(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    dns_server.set_records("_spf.mail.test", "TXT", ['"v=spf1 ip4:198.51.100.0/24 ~all"'])
    report = await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN))
    spf = by_name(report)["spf"]
    assert spf.status == FAIL
    assert (
        f"{EGRESS} gets fail" in spf.fix
    )  # the include does not match: the -all after it and f"add ip4:{EGRESS}" in spf.fix
    assert report.sending_allowed  # SPF lowers standing; DKIM and DMARC still pass


async def test_spf_past_ten_lookups_fails(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    chain = {
        f"s{i}.mail.test": {"TXT": [f'"v=spf1 include:s{i + 1}.mail.test -all"']} for i in range(12)
    }
    dns_server.load(chain)
    dns_server.set_records("bounces.mail.test", "TXT", ['"v=spf1 include:s0.mail.test -all"'])
    spf = by_name(await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN)))["spf"]
    assert spf.status == FAIL and "more than 10 DNS lookups" in spf.fix


async def test_no_dmarc_fails_and_refuses_sending(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    dns_server.set_records(f"_dmarc.{DOMAIN}", "TXT", ['"not a policy"'])
    report = await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN))
    dmarc = by_name(report)["dmarc"]
    assert dmarc.status == FAIL and dmarc.found == "no DMARC record"
    assert f"publish TXT _dmarc.{DOMAIN}" in dmarc.fix
    assert not report.sending_allowed


async def test_a_ptr_mismatch_fails(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    dns_server.set_records("10.2.0.192.in-addr.arpa", "PTR", ["host-10.isp.test."])
    ptr = by_name(await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN)))["ptr:one"]
    assert ptr.status == FAIL and ptr.found == "PTR host-10.isp.test"
    assert "set its PTR to mta.mail.test" in ptr.fix


async def test_return_path_and_tracking_not_published(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    dns_server.set_records(f"bounces.{DOMAIN}", "CNAME", ["elsewhere.test."])
    dns_server.set_records(f"links.{DOMAIN}", "CNAME", ["elsewhere.test."])
    checks = by_name(await verify(deliv_settings, DOMAIN, await stored_keys(pool, DOMAIN)))
    assert checks["return_path"].status == FAIL
    assert "CNAME bounces.mail.test" in checks["return_path"].fix
    assert checks["tracking"].status == FAIL and "CNAME track.mail.test" in checks["tracking"].fix
    # SPF and DMARC then look at the shared bounce domain, which does not align.
    assert checks["spf"].subject == "bounces.mail.test"
    assert checks["dmarc"].status == "warn" and "SPF does not" in checks["dmarc"].fix


async def test_a_domain_that_stops_passing_records_its_event(pool, deliv_settings, dns_server):
    await publish(pool, deliv_settings, dns_server)
    reverifier = Reverifier(pool, deliv_settings, max_age=0)
    [first] = await reverifier.run_once()  # found by the scheduler without being asked
    assert first.status == PASS
    stored = await pool.fetchrow("SELECT * FROM domain_verifications")
    assert stored["status"] == PASS and stored["sending_allowed"]
    dns_server.set_records(f"_dmarc.{DOMAIN}", "TXT", ['"v=spf1 -all"'])
    [second] = await reverifier.run_once()
    assert not second.sending_allowed
    [event] = await pool.fetch("SELECT * FROM events WHERE type = 'domain.verification_failed'")
    data = event["data"]
    assert data["domain"] == DOMAIN and data["sending_allowed"] is False
    assert [f["check"] for f in data["failed"]] == ["dmarc"]
    await verify_and_store(pool, deliv_settings, DOMAIN)  # still failing: no second event
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type LIKE 'domain.%'") == 1


async def test_cli_prints_a_table_and_exits_non_zero_on_failure(
    pool, deliv_settings, dns_server, database_url, tmp_path
):
    await publish(pool, deliv_settings, dns_server)
    env = {
        "PENGUINMAILS_MTA__DNS_SERVERS": f'["{dns_server.address}"]',
        "PENGUINMAILS_MTA__HOSTNAME": "mta.mail.test",
        "PENGUINMAILS_MTA__BOUNCE_DOMAIN": "bounces.mail.test",
        "PENGUINMAILS_MTA__TLS_CA_FILE": deliv_settings.mta.tls_ca_file,
        "PENGUINMAILS_MTA__SOURCES": orjson.dumps(
            {"one": {"address": EGRESS, "ehlo": "mta.mail.test"}}
        ).decode(),
        "PENGUINMAILS_TRACKER__BASE_URL": "https://track.mail.test",
        "PENGUINMAILS_TRACKER__HTTPS_PORT": str(deliv_settings.tracker.https_port),
    }
    code, out, err = await run_cli(database_url, tmp_path, "domains", "verify", DOMAIN, **env)
    assert code == 0, err
    assert out.startswith(f"{DOMAIN}: PASS")
    assert re.search(r"PASS\s+dkim:s1\s+s1\._domainkey\.acme\.test\s+v=DKIM1", out)
    assert "Live sending from this domain is allowed." in out
    dns_server.set_records("10.2.0.192.in-addr.arpa", "PTR", ["host-10.isp.test."])
    code, out, _ = await run_cli(database_url, tmp_path, "domains", "verify", DOMAIN, **env)
    assert code == 1
    assert re.search(r"FAIL\s+ptr:one", out) and "ptr:one: ask the address's owner" in out
    code, _, err = await run_cli(database_url, tmp_path, "domains", "verify", "other.test", **env)
    assert code != 0 and "not a sending domain" in err


async def test_a_verified_domain_sends_with_its_own_return_path_and_tracking_host(
    pool, deliv_settings, dns_server, smtp_peer, start_worker, http
):
    """The done-when: a message from a verified domain carries a return path under that
    domain, a bounce to it is processed, and its links use the domain's tracking host, which
    the tracker serves."""
    await publish(pool, deliv_settings, dns_server)
    report = await verify_and_store(pool, deliv_settings, DOMAIN)
    assert report.passed("return_path") and report.passed("tracking_tls")
    settings = deliv_settings.model_copy(
        update={
            "mta": deliv_settings.mta.model_copy(
                update={"routes": {"dest.test": smtp_peer.hop}, "sources": {}}
            ),
            "inbound": deliv_settings.inbound.model_copy(update={"listen": "127.0.0.1:0"}),
            "tracker": deliv_settings.tracker.model_copy(update={"listen": "127.0.0.1:0"}),
        }
    )
    [queue_id] = await queue_messages(
        pool,
        ["ann@dest.test"],
        from_email=f"news@{DOMAIN}",
        # An image of its own, so the open pixel goes in (a short image-less page gets none).
        html='<p><img src="https://acme.test/logo.png" alt="Acme"></p>'
        '<p>Hi <a href="https://acme.test/offer">the offer</a></p>',
        settings={"track_opens": True, "track_clicks": True},
    )
    worker = await start_worker(settings)
    await wait_for(lambda: smtp_peer.received)
    await worker.stop()
    [received] = smtp_peer.received
    assert received.mail_from.endswith(f"@bounces.{DOMAIN}")  # SPF aligns with the From
    unsubscribe = received.message["List-Unsubscribe"]
    assert f"@bounces.{DOMAIN}?subject=unsubscribe>" in unsubscribe
    html = received.message.get_body(("html",)).get_content()
    [click] = re.findall(rf'href="(https://links\.{re.escape(DOMAIN)}/c/[^"]+)"', html)
    assert re.search(rf'src="https://links\.{re.escape(DOMAIN)}/o/[^"]+\.gif"', html)

    # The tracker answers for the domain's tracking host (real HTTP, the Host header given).
    async with Tracker(pool, settings, dispatch=False) as tracker:
        path = click.removeprefix(f"https://links.{DOMAIN}")
        async with http.get(
            f"{tracker.url}{path}", headers={"Host": f"links.{DOMAIN}"}, allow_redirects=False
        ) as reply:
            assert reply.status == 302
            assert reply.headers["Location"].startswith("https://acme.test/offer")

    # A bounce to the domain's own return path is accepted and processed.
    inbound = await InboundServer(pool, settings).start()
    try:
        message_id = received.message["Message-ID"].strip("<>")
        bounce = SentMessage(queue_id, message_id, "ann@dest.test", received.mail_from, "").fill(
            corpus("postfix_hard_user_unknown_5.1.1.eml")
        )
        errors, _ = await send(inbound.port, bounce, "", [received.mail_from])
        assert errors == {}
        # The relaying rule still holds for every other domain.
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send(inbound.port, b"Subject: x\r\n\r\nx\r\n", "", ["b@elsewhere.test"])
    finally:
        await inbound.stop(1.0)
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", queue_id) == "bounced"
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1
