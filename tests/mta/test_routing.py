"""Router against a real DNS server on 127.0.0.1: MX order, TTL cache, implicit and null MX,
permanent versus temporary failures, and the overrides that bypass DNS altogether."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import pytest

from mta.routing import Route, RouteError, Router
from penguinmails.config import MtaSettings, Settings
from tests.dns_server import DROP, NODATA, NXDOMAIN, SERVFAIL, DNSServer

MX_PORT = 2525


def make_router(server: DNSServer, **mta: Any) -> Router:
    config: dict[str, Any] = {
        "dns_servers": [server.address],
        "dns_timeout": 0.5,
        "mx_port": MX_PORT,
    }
    config.update(mta)
    return Router(Settings.model_validate({"mta": config}).mta)


async def route_error(router: Router, domain: str) -> RouteError:
    with pytest.raises(RouteError) as info:
        await router.route(domain)
    return info.value


# -- MX --------------------------------------------------------------------------------------


async def test_mx_hosts_in_preference_order_resolved_by_the_same_server(
    dns_server: DNSServer,
) -> None:
    dns_server.load(
        {
            "example.test": {
                "MX": ["30 mx3.example.test.", "10 mx1.example.test.", "20 mx2.example.test."]
            },
            "mx1.example.test": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
            "mx2.example.test": {"A": ["127.0.0.12"]},
            "mx3.example.test": {"A": ["127.0.0.13"]},
        }
    )
    router = make_router(dns_server)

    route = await router.route("Example.TEST.")

    assert route.hosts == (
        ("127.0.0.11", MX_PORT),
        ("::1", MX_PORT),
        ("127.0.0.12", MX_PORT),
        ("127.0.0.13", MX_PORT),
    )
    assert route.username == "" and not route.require_starttls
    # Each address keeps the MX name it came from (what MTA-STS matches and TLS verifies).
    assert route.names == (
        "mx1.example.test",
        "mx1.example.test",
        "mx2.example.test",
        "mx3.example.test",
    )
    kept = route.named(lambda name: name != "mx1.example.test")
    assert kept.hosts == (("127.0.0.12", MX_PORT), ("127.0.0.13", MX_PORT))
    assert kept.names == ("mx2.example.test", "mx3.example.test")
    # The .test names exist only on our server: the exchanges were resolved through it.
    assert dns_server.count("example.test", "MX") == 1
    for host in ("mx1", "mx2", "mx3"):
        assert dns_server.count(f"{host}.example.test", "A") == 1
        assert dns_server.count(f"{host}.example.test", "AAAA") == 1


async def test_mx_host_with_several_addresses_keeps_them_all(dns_server: DNSServer) -> None:
    dns_server.load(
        {
            "multi.test": {"MX": ["5 mx.multi.test."]},
            "mx.multi.test": {"A": ["127.0.0.21", "127.0.0.22"]},
        }
    )
    route = await make_router(dns_server).route("multi.test")
    assert set(route.hosts) == {("127.0.0.21", MX_PORT), ("127.0.0.22", MX_PORT)}
    assert len(route.hosts) == 2


async def test_mx_lookup_falls_back_to_tcp_when_udp_is_truncated() -> None:
    async with DNSServer(truncate_udp=True) as server:
        server.load({"tcp.test": {"MX": ["10 mx.tcp.test."]}, "mx.tcp.test": {"A": ["127.0.0.31"]}})
        route = await make_router(server).route("tcp.test")
    assert route.hosts == (("127.0.0.31", MX_PORT),)
    assert {q.transport for q in server.queries} == {"udp", "tcp"}


async def test_each_configured_dns_server_is_asked_on_its_own_port(dns_server: DNSServer) -> None:
    async with DNSServer() as second:
        dns_server.load({"two.test": SERVFAIL, "mx.two.test": SERVFAIL})
        second.load({"two.test": {"MX": ["10 mx.two.test."]}, "mx.two.test": {"A": ["127.0.0.41"]}})
        router = make_router(dns_server, dns_servers=[dns_server.address, second.address])
        route = await router.route("two.test")
    assert route.hosts == (("127.0.0.41", MX_PORT),)
    assert dns_server.count("two.test", "MX") >= 1
    assert second.count("two.test", "MX") == 1


# -- cache -----------------------------------------------------------------------------------


async def test_cached_route_is_reused_within_ttl_and_refreshed_after(dns_server: DNSServer) -> None:
    dns_server.load(
        {
            "cached.test": {"MX": (1, ["10 mx.cached.test."])},
            "mx.cached.test": {"A": (1, ["127.0.0.51"]), "AAAA": NODATA},
        }
    )
    router = make_router(dns_server)

    first = await router.route("cached.test")
    asked = len(dns_server.queries)
    assert asked == 3  # MX, then A and AAAA of the exchange
    second = await router.route("CACHED.test")
    assert second == first
    assert len(dns_server.queries) == asked  # within the TTL: no query at all

    dns_server.set_records("mx.cached.test", "A", ["127.0.0.52"], ttl=1)
    await asyncio.sleep(1.1)
    third = await router.route("cached.test")
    assert dns_server.count("cached.test", "MX") == 2
    assert third.hosts == (("127.0.0.52", MX_PORT),)


async def test_cache_lasts_no_longer_than_the_shortest_ttl_involved(dns_server: DNSServer) -> None:
    dns_server.load(
        {
            "short.test": {"MX": (3600, ["10 mx.short.test."])},
            "mx.short.test": {"A": (1, ["127.0.0.61"])},
        }
    )
    router = make_router(dns_server)
    await router.route("short.test")
    dns_server.set_records("mx.short.test", "A", ["127.0.0.62"], ttl=1)
    await asyncio.sleep(1.1)
    route = await router.route("short.test")
    assert route.hosts == (("127.0.0.62", MX_PORT),)


async def test_concurrent_lookups_for_one_domain_share_one_query(dns_server: DNSServer) -> None:
    dns_server.load(
        {"busy.test": {"MX": ["10 mx.busy.test."]}, "mx.busy.test": {"A": ["127.0.0.71"]}}
    )
    router = make_router(dns_server)
    routes = await asyncio.gather(*(router.route("busy.test") for _ in range(50)))
    assert {r.hosts for r in routes} == {(("127.0.0.71", MX_PORT),)}
    assert dns_server.count("busy.test", "MX") == 1
    assert dns_server.count("mx.busy.test", "A") == 1


async def test_a_cancelled_caller_does_not_break_the_lookup_for_others(
    dns_server: DNSServer,
) -> None:
    dns_server.load(
        {"cancel.test": {"MX": ["10 mx.cancel.test."]}, "mx.cancel.test": {"A": ["127.0.0.72"]}}
    )
    router = make_router(dns_server)
    first = asyncio.ensure_future(router.route("cancel.test"))
    second = asyncio.ensure_future(router.route("cancel.test"))
    await asyncio.sleep(0)
    first.cancel()
    route = await second
    assert route.hosts == (("127.0.0.72", MX_PORT),)
    with pytest.raises(asyncio.CancelledError):
        await first


# -- implicit and null MX ------------------------------------------------------------------


async def test_domain_without_mx_uses_its_own_addresses(dns_server: DNSServer) -> None:
    dns_server.load({"implicit.test": {"A": ["127.0.0.81"], "AAAA": ["::1"]}})
    route = await make_router(dns_server).route("implicit.test")
    assert route.hosts == (("127.0.0.81", MX_PORT), ("::1", MX_PORT))
    assert dns_server.count("implicit.test", "MX") == 1


async def test_null_mx_is_a_permanent_556(dns_server: DNSServer) -> None:
    dns_server.load({"nomail.test": {"MX": ["0 ."], "A": ["127.0.0.91"]}})
    router = make_router(dns_server)
    error = await route_error(router, "nomail.test")
    assert error.permanent
    assert error.code == 556
    assert "5.1.10" in str(error)
    assert dns_server.count(".", "A") == 0 and dns_server.count("nomail.test", "A") == 0
    again = await route_error(router, "nomail.test")  # cached like any answer
    assert again.code == 556 and again.permanent
    assert dns_server.count("nomail.test", "MX") == 1
    # Each caller gets its own exception, so a cached error's traceback does not pile up.
    assert again is not error
    assert len(traceback.extract_tb(again.__traceback__)) == len(
        traceback.extract_tb(error.__traceback__)
    )


async def test_a_null_mx_among_real_ones_is_skipped(dns_server: DNSServer) -> None:
    dns_server.load(
        {
            "mixed.test": {"MX": ["0 .", "10 mx.mixed.test."]},
            "mx.mixed.test": {"A": ["127.0.0.92"]},
        }
    )
    route = await make_router(dns_server).route("mixed.test")
    assert route.hosts == (("127.0.0.92", MX_PORT),)


async def test_nonexistent_domain_is_permanent(dns_server: DNSServer) -> None:
    dns_server.load({"gone.test": NXDOMAIN})
    error = await route_error(make_router(dns_server), "gone.test")
    assert error.permanent
    assert error.code >= 500
    assert "5.1.2" in str(error)


async def test_unknown_name_is_nxdomain_too(dns_server: DNSServer) -> None:
    error = await route_error(make_router(dns_server), "never-heard-of.test")
    assert error.permanent


async def test_domain_with_no_mx_and_no_address_is_permanent(dns_server: DNSServer) -> None:
    dns_server.load({"empty.test": {"TXT": ['"v=spf1 -all"']}})
    error = await route_error(make_router(dns_server), "empty.test")
    assert error.permanent
    assert error.code >= 500


@pytest.mark.parametrize("domain", ["a..b.test", "", "x" * 64 + ".test", "."])
async def test_malformed_domain_is_permanent_without_asking(
    dns_server: DNSServer, domain: str
) -> None:
    error = await route_error(make_router(dns_server), domain)
    assert error.permanent
    assert dns_server.queries == []


# -- temporary failures --------------------------------------------------------------------


async def test_servfail_is_temporary(dns_server: DNSServer) -> None:
    dns_server.load({"broken.test": SERVFAIL})
    error = await route_error(make_router(dns_server), "broken.test")
    assert not error.permanent
    assert 400 <= error.code < 500
    assert "4.4.3" in str(error)


async def test_unanswered_query_times_out_as_temporary(dns_server: DNSServer) -> None:
    dns_server.load({"slow.test": DROP})
    router = make_router(dns_server, dns_timeout=0.5)
    # The server never answers: only the resolver's own timeout can end the lookup (the
    # test's guard is four times longer, so a lookup that ignored it would fail here).
    error = await asyncio.wait_for(route_error(router, "slow.test"), 2.0)
    assert not error.permanent
    assert 400 <= error.code < 500
    assert dns_server.count("slow.test", "MX") >= 1  # it was asked, and said nothing


async def test_failed_address_lookup_for_implicit_mx_is_temporary_not_a_bounce(
    dns_server: DNSServer,
) -> None:
    dns_server.load({"flaky.test": {"MX": NODATA, "A": SERVFAIL, "AAAA": NODATA}})
    error = await route_error(make_router(dns_server), "flaky.test")
    assert not error.permanent
    assert 400 <= error.code < 500


async def test_timed_out_address_lookup_for_implicit_mx_is_temporary(dns_server: DNSServer) -> None:
    dns_server.load({"half.test": {"MX": NODATA, "A": DROP, "AAAA": NODATA}})
    error = await route_error(make_router(dns_server), "half.test")
    assert not error.permanent


async def test_mx_hosts_without_addresses_are_temporary(dns_server: DNSServer) -> None:
    dns_server.load({"dangling.test": {"MX": ["10 nowhere.dangling.test."]}})
    error = await route_error(make_router(dns_server), "dangling.test")
    assert not error.permanent
    assert 400 <= error.code < 500


async def test_one_unresolvable_mx_host_does_not_hide_the_others(dns_server: DNSServer) -> None:
    dns_server.load(
        {
            "partial.test": {"MX": ["10 bad.partial.test.", "20 good.partial.test."]},
            "bad.partial.test": SERVFAIL,
            "good.partial.test": {"A": ["127.0.0.101"]},
        }
    )
    route = await make_router(dns_server).route("partial.test")
    assert route.hosts == (("127.0.0.101", MX_PORT),)


# -- overrides -------------------------------------------------------------------------------


async def test_configured_route_beats_mx(dns_server: DNSServer) -> None:
    dns_server.load({"routed.test": {"MX": ["10 mx.routed.test."]}})
    router = make_router(dns_server, routes={"Routed.Test": "127.0.0.1:2600"})
    route = await router.route("ROUTED.test.")
    assert route.hosts == (("127.0.0.1", 2600),)
    assert dns_server.queries == []


async def test_smarthost_carries_all_other_mail(dns_server: DNSServer) -> None:
    router = make_router(
        dns_server,
        routes={"routed.test": "127.0.0.1:2600"},
        smarthost={"host": "127.0.0.1:2587", "username": "relay", "password": "secret"},
    )
    route = await router.route("anything.test")
    assert route == Route(
        key="smarthost:127.0.0.1:2587",
        hosts=(("127.0.0.1", 2587),),
        username="relay",
        password="secret",
        require_starttls=True,
    )
    assert (await router.route("routed.test")).hosts == (("127.0.0.1", 2600),)
    assert dns_server.queries == []


async def test_smarthost_without_credentials_does_not_force_starttls() -> None:
    router = Router(MtaSettings.model_validate({"smarthost": {"host": "[::1]:2587"}}))
    route = await router.route("example.test")
    assert route.hosts == (("::1", 2587),)
    assert not route.require_starttls


async def test_sandbox_beats_routes_smarthost_and_dns(dns_server: DNSServer) -> None:
    dns_server.load({"sandboxed.test": {"MX": ["10 mx.sandboxed.test."]}})
    router = make_router(
        dns_server,
        sandbox=True,
        sandbox_sink="127.0.0.1:2999",
        routes={"sandboxed.test": "127.0.0.1:2600"},
        smarthost={"host": "127.0.0.1:2587"},
    )
    for domain in ("sandboxed.test", "other.test"):
        route = await router.route(domain)
        assert route.key == "sandbox"
        assert route.hosts == (("127.0.0.1", 2999),)
    assert dns_server.queries == []
