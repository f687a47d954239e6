"""TokenBucket: permits per second, bursts, pauses, AIMD. A fake clock; no real sleeps."""

from __future__ import annotations

import asyncio

import pytest

from exporter.sources.ratelimit import TokenBucket
from tests.conftest import FakeTime


def make(rate: float, burst: float, t: FakeTime, **kw: float) -> TokenBucket:
    return TokenBucket(rate, burst, t.clock, t.sleep, **kw)


def grant_times(bucket: TokenBucket, t: FakeTime, n: int) -> list[float]:
    async def run() -> list[float]:
        times = []
        for _ in range(n):
            await bucket.acquire()
            times.append(t.now)
        return times

    return asyncio.run(run())


def test_burst_is_free_then_steady_rate() -> None:
    t = FakeTime(100.0)
    bucket = make(4.0, 2, t)
    times = grant_times(bucket, t, 6)
    assert [round(x - 100.0, 6) for x in times] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


def test_average_rate_over_many_permits() -> None:
    t = FakeTime(100.0)
    bucket = make(10.0, 1, t)
    times = grant_times(bucket, t, 101)
    # 100 permits after the first take 10 seconds at 10/s.
    assert times[-1] - times[0] == pytest.approx(10.0)


def test_idle_time_refills_up_to_burst_only() -> None:
    t = FakeTime(100.0)
    bucket = make(2.0, 3, t)
    grant_times(bucket, t, 3)  # empty it
    t.now += 1000.0  # a long idle period
    start = t.now
    times = grant_times(bucket, t, 5)
    assert [round(x - start, 6) for x in times] == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_pause_holds_every_caller_and_restarts_without_burst() -> None:
    t = FakeTime(100.0)
    bucket = make(4.0, 4, t)
    bucket.pause_until(t.now + 5.0)
    assert bucket.paused_until == 105.0

    async def run() -> list[float]:
        times: list[float] = []

        async def one() -> None:
            await bucket.acquire()
            times.append(t.now)

        await asyncio.gather(*(one() for _ in range(3)))
        return times

    times = asyncio.run(run())
    assert min(times) >= 105.0
    # After the pause: one permit at once, then spaced at 1/rate (the idle time is no burst credit).
    assert [round(x - 105.0, 6) for x in times] == [0.0, 0.25, 0.5]


def test_an_earlier_pause_does_not_shorten_a_later_one() -> None:
    t = FakeTime(100.0)
    bucket = make(4.0, 4, t)
    bucket.pause_until(110.0)
    bucket.pause_until(103.0)
    assert bucket.paused_until == 110.0


def test_slow_down_halves_rate_down_to_min_and_recover_adds_steps() -> None:
    t = FakeTime(100.0)
    bucket = make(10.0, 1, t)
    bucket.slow_down()
    assert bucket.rate == 5.0
    for _ in range(20):
        bucket.slow_down()
    assert bucket.rate == bucket.min_rate == pytest.approx(10.0 / 32)
    bucket.recover()
    assert bucket.rate == pytest.approx(10.0 / 32 + 0.5)
    for _ in range(100):
        bucket.recover()
    assert bucket.rate == bucket.max_rate == 10.0


def test_slowed_bucket_spaces_permits_at_the_new_rate() -> None:
    t = FakeTime(100.0)
    bucket = make(4.0, 1, t)
    grant_times(bucket, t, 1)
    bucket.slow_down()  # 2/s
    start = t.now
    times = grant_times(bucket, t, 3)
    assert [round(x - start, 6) for x in times] == [0.5, 1.0, 1.5]


def test_concurrent_waiters_are_served_in_order() -> None:
    t = FakeTime(100.0)
    bucket = make(1.0, 1, t)

    async def run() -> list[int]:
        order: list[int] = []

        async def one(i: int) -> None:
            await bucket.acquire()
            order.append(i)

        await asyncio.gather(*(one(i) for i in range(5)))
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]
    assert t.now == pytest.approx(104.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0.5)])
def test_rejects_nonsense(rate: float, burst: float) -> None:
    t = FakeTime(100.0)
    with pytest.raises(ValueError):
        make(rate, burst, t)
