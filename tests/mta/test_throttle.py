"""Per-domain throttles: the token bucket's rate and burst, and the back-off that a 421 or a
run of 4xx replies opens, on a clock the tests move by hand (tests/helpers.py's FakeClock), so
every wait is exact and none costs real time."""

from __future__ import annotations

import asyncio

import pytest

from mta.throttle import DomainThrottle, Throttles, TokenBucket
from penguinmails.config import MtaSettings, Settings, ThrottleRule
from tests.helpers import FakeClock

# -- token bucket ----------------------------------------------------------------------------

# Refilling by elapsed time x rate leaves float dust: a wait of 1e-13 s is no wait.
NO_WAIT = pytest.approx(0, abs=1e-9)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def waited(bucket: TokenBucket, clock: FakeClock, count: int) -> float:
    """The clock time `count` acquisitions in a row spend waiting for tokens."""
    started = clock.monotonic()
    for _ in range(count):
        await bucket.acquire()
    return clock.monotonic() - started


async def test_bucket_spends_its_burst_at_once_then_keeps_the_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=50, burst=5, clock=clock)
    assert await waited(bucket, clock, 5) == 0  # the burst is free
    assert await waited(bucket, clock, 25) == pytest.approx(25 / 50)


async def test_thirty_acquisitions_at_fifty_a_second_with_burst_five_take_half_a_second(
    clock: FakeClock,
) -> None:
    assert await waited(TokenBucket(rate=50, burst=5, clock=clock), clock, 30) == pytest.approx(0.5)


async def test_idle_time_saves_up_no_more_than_the_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=50, burst=5, clock=clock)
    await waited(bucket, clock, 5)
    clock.advance(0.3)  # 15 tokens' worth of time, but the bucket holds 5
    assert await waited(bucket, clock, 10) == pytest.approx(5 / 50)  # 5 free, then 5 at 50/s


async def test_rate_zero_is_unlimited(clock: FakeClock) -> None:
    assert await waited(TokenBucket(rate=0, burst=1, clock=clock), clock, 10_000) == 0
    assert clock.slept == []


async def test_concurrent_waiters_share_the_rate_first_come_first_served(
    clock: FakeClock,
) -> None:
    bucket = TokenBucket(rate=100, burst=1, clock=clock)
    order: list[int] = []

    async def take(n: int) -> None:
        await bucket.acquire()
        order.append(n)

    started = clock.monotonic()
    tasks = []
    for n in range(20):
        tasks.append(asyncio.ensure_future(take(n)))
        await asyncio.sleep(0)  # queue them in a known order
    await asyncio.gather(*tasks)
    assert order == list(range(20))
    assert clock.monotonic() - started == pytest.approx(19 / 100)  # 1 free, 19 at 100/s


async def test_a_cancelled_waiter_does_not_take_a_token(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=20, burst=1, clock=clock)
    await bucket.acquire()
    waiter = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    assert clock.slept == [pytest.approx(1 / 20)]  # asleep until its token arrives
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    # The clock has reached the token that waiter wanted, so it is there for the next caller.
    assert await waited(bucket, clock, 1) == NO_WAIT


# -- back-off --------------------------------------------------------------------------------


def throttle(
    after: int = 3, seconds: float = 60.0, clock: FakeClock | None = None
) -> DomainThrottle:
    rule = ThrottleRule(backoff_after_4xx=after, backoff_seconds=seconds)
    return DomainThrottle("dest.test", rule, clock or FakeClock())


def test_no_backoff_at_first() -> None:
    assert throttle().backoff_until() is None


def test_421_opens_the_backoff_at_once(clock: FakeClock) -> None:
    t = throttle(after=5, seconds=60, clock=clock)
    t.note_reply(421)
    assert t.backoff_until() == clock.time() + 60


def test_a_run_of_4xx_opens_the_backoff() -> None:
    t = throttle(after=3)
    t.note_reply(450)
    t.note_reply(451)
    assert t.backoff_until() is None
    t.note_reply(452)
    assert t.backoff_until() is not None


def test_connection_failures_count_as_4xx() -> None:
    t = throttle(after=2)
    t.note_reply(None)
    assert t.backoff_until() is None
    t.note_reply(None)
    assert t.backoff_until() is not None


def test_a_2xx_resets_the_run() -> None:
    t = throttle(after=3)
    for code in (450, 450, 250, 450, 450, 250, 450, 450):
        t.note_reply(code)
    assert t.backoff_until() is None
    t.note_reply(450)
    assert t.backoff_until() is not None


def test_5xx_does_not_count_toward_the_run() -> None:
    t = throttle(after=3)
    for code in (450, 550, 551, 554, 450):
        t.note_reply(code)
    assert t.backoff_until() is None
    t.note_reply(450)  # the third 4xx: the 5xx neither counted nor reset the run
    assert t.backoff_until() is not None


def test_codes_outside_4xx_do_not_count() -> None:
    t = throttle(after=1)
    for code in (220, 221, 250, 354, 334, 550):
        t.note_reply(code)
    assert t.backoff_until() is None


def test_backoff_after_one_4xx_when_so_configured() -> None:
    t = throttle(after=1)
    t.note_reply(452)
    assert t.backoff_until() is not None


def test_backoff_ends_and_a_new_run_is_needed_to_reopen_it(clock: FakeClock) -> None:
    t = throttle(after=2, seconds=0.2, clock=clock)
    t.note_reply(450)
    t.note_reply(450)
    assert t.backoff_until() is not None
    clock.advance(0.19)
    assert t.backoff_until() is not None
    clock.advance(0.02)
    assert t.backoff_until() is None
    t.note_reply(450)  # the run started over when the back-off opened
    assert t.backoff_until() is None
    t.note_reply(450)
    assert t.backoff_until() is not None


def test_another_421_during_backoff_extends_it(clock: FakeClock) -> None:
    t = throttle(seconds=60, clock=clock)
    t.note_reply(421)
    first = t.backoff_until()
    assert first is not None
    clock.advance(10)
    t.note_reply(421)
    assert t.backoff_until() == first + 10


def test_a_late_2xx_does_not_cancel_an_open_backoff() -> None:
    t = throttle(seconds=60)
    t.note_reply(421)
    t.note_reply(250)  # a message already in flight on another connection
    assert t.backoff_until() is not None


def test_zero_backoff_seconds_never_blocks() -> None:
    t = throttle(after=1, seconds=0)
    t.note_reply(421)
    assert t.backoff_until() is None


# -- per-domain rules ------------------------------------------------------------------------


def test_throttles_apply_each_domains_rule_and_keep_one_throttle_per_domain() -> None:
    settings = Settings.model_validate(
        {
            "mta": {
                "default_throttle": {"rate_per_second": 0, "backoff_after_4xx": 5},
                "throttle": {"slow.test": {"rate_per_second": 2.5, "burst": 3}},
            }
        }
    ).mta
    throttles = Throttles(settings)
    slow = throttles["slow.test"]
    assert slow is throttles["slow.test"]
    assert slow.domain == "slow.test"
    assert slow.bucket.rate == 2.5 and slow.bucket.burst == 3
    other = throttles["other.test"]
    assert other.rule == settings.default_throttle
    assert other.bucket.rate == 0


def test_backoff_is_per_domain() -> None:
    throttles = Throttles(MtaSettings())
    throttles["a.test"].note_reply(421)
    assert throttles["a.test"].backoff_until() is not None
    assert throttles["b.test"].backoff_until() is None


async def test_domains_are_rate_limited_independently(clock: FakeClock) -> None:
    settings = MtaSettings.model_validate({"default_throttle": {"rate_per_second": 20, "burst": 1}})
    throttles = Throttles(settings, clock)
    await asyncio.gather(*(throttles[f"d{i}.test"].bucket.acquire() for i in range(20)))
    assert clock.slept == []  # each domain spends its own first token
    await throttles["d0.test"].bucket.acquire()
    assert sum(clock.slept) == pytest.approx(1 / 20)  # a domain's second token waits its rate


def test_every_domain_throttle_reads_the_throttles_clock(clock: FakeClock) -> None:
    throttles = Throttles(
        MtaSettings.model_validate({"default_throttle": {"backoff_seconds": 5}}), clock
    )
    throttles["a.test"].note_reply(421)
    assert throttles["a.test"].backoff_until() == clock.time() + 5
