"""Egress sources: pools pick by weight, a warming source's day is counted once across
processes and spills to warm sources when spent, and a source whose EHLO name disagrees
with its reverse DNS is reported at start."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime

import asyncpg
import dns.asyncresolver
import dns.nameserver
import pytest

from mta.sources import Egress, Source, check_sources
from penguinmails.config import MtaSettings, split_hostport
from tests.dns_server import DNSServer

DAY = date(2026, 11, 29)


def settings(**changes: object) -> MtaSettings:
    base: dict[str, object] = {
        "hostname": "mta.acme.test",
        "sources": {
            "warm": {"address": "127.0.0.2", "ehlo": "warm.acme.test"},
            "new": {
                "address": "127.0.0.3",
                "warmup": {"start": "2026-11-28", "daily": [2, 3, 5]},
            },
        },
        "pools": {"all": {"sources": {"warm": 1, "new": 3}}, "fresh": {"sources": {"new": 1}}},
    }
    base.update(changes)
    return MtaSettings.model_validate(base)


def test_a_warm_up_rises_day_by_day_then_ends() -> None:
    new = Egress(None, settings()).sources["new"]
    assert [new.cap(date(2026, 11, d)) for d in (27, 28, 29, 30)] == [2, 2, 3, 5]
    assert new.cap(date(2026, 12, 1)) is None  # warm
    assert Egress(None, settings()).sources["warm"].cap(DAY) is None
    default = Egress(None, MtaSettings(hostname="h.test"))
    assert list(default.sources.values()) == [Source("default", "", "h.test")]


async def test_pools_pick_by_weight(pool: asyncpg.Pool) -> None:
    egress = Egress(None, settings(), rng=random.Random(7), today=lambda: DAY)
    picks = Counter()
    for _ in range(400):
        chosen = await egress.choose("all", "provider:google")
        assert isinstance(chosen, Source)
        picks[chosen.name] += 1
    assert 250 < picks["new"] < 350 and picks["warm"] == 400 - picks["new"]  # 3:1
    assert egress.sources["new"].ehlo == "mta.acme.test"  # no ehlo: [mta] hostname


async def test_a_spent_warm_up_day_spills_to_warm_sources_then_waits(pool: asyncpg.Pool) -> None:
    # Two processes (two Egress objects) share the day's count of 3 toward Google.
    one = Egress(pool, settings(), rng=random.Random(1), today=lambda: DAY)
    two = Egress(pool, settings(), rng=random.Random(2), today=lambda: DAY)
    names = [(await (one if i % 2 else two).choose("fresh", "provider:google")) for i in range(4)]
    assert [n.name for n in names[:3] if isinstance(n, Source)] == ["new"] * 3
    # Spent for Google today, with no other source in the pool: wait for tomorrow (UTC).
    assert names[3] == datetime(2026, 11, 30, tzinfo=UTC)
    # Toward another provider the day is its own.
    assert isinstance(await one.choose("fresh", "provider:yahoo"), Source)
    # In a pool with a warm source, the rest spills there.
    spilled = {(await one.choose("all", "provider:google")).name for _ in range(20)}  # type: ignore[union-attr]
    assert spilled == {"warm"}
    assert (
        await pool.fetchval(
            "SELECT sent FROM source_volume WHERE source = 'new' AND bucket = 'provider:google'"
        )
        == 3
    )


def test_pools_must_name_known_sources() -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        settings(pools={"p": {"sources": {"nobody": 1}}})
    with pytest.raises(ValueError, match="default_pool"):
        settings(default_pool="nope")
    with pytest.raises(ValueError, match="positive"):
        settings(pools={"p": {"sources": {"warm": 0}}})


async def test_a_source_greeting_as_another_name_than_its_reverse_dns_is_reported(
    dns_server: DNSServer,
) -> None:
    dns_server.load(
        {
            "2.0.0.127.in-addr.arpa": {"PTR": ["warm.acme.test."]},
            "warm.acme.test": {"A": ["127.0.0.2"]},
            "3.0.0.127.in-addr.arpa": {"PTR": ["other.acme.test."]},
            "4.0.0.127.in-addr.arpa": {"PTR": ["liar.acme.test."]},
            "liar.acme.test": {"A": ["192.0.2.9"]},
        }
    )
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_hostport(dns_server.address))]
    sources = [
        Source("warm", "127.0.0.2", "warm.acme.test"),  # agrees both ways
        Source("new", "127.0.0.3", "new.acme.test"),  # PTR names another host
        Source("liar", "127.0.0.4", "liar.acme.test"),  # PTR agrees, forward does not
        Source("none", "127.0.0.5", "none.acme.test"),  # no PTR at all
        Source("default", "", "mta.acme.test"),  # the system's address: not checked
    ]
    warnings = await check_sources(sources, resolver)
    assert len(warnings) == 3
    assert "source new: 127.0.0.3 reverse DNS is other.acme.test" in warnings[0]
    assert "liar.acme.test resolves to 192.0.2.9, not 127.0.0.4" in warnings[1]
    assert "no PTR record" in warnings[2]
