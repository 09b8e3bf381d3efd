"""Sending domains' DNS checks against a real DNS server (tests/dns_server.py) and a real TLS
listener: a correctly published domain passes every check; each usual mistake fails with
its fix named; the result is stored, and a domain that stops passing records its event."""

from __future__ import annotations

import re
from typing import Any

import orjson

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
from tests.helpers import run_cli


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
