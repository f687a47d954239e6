"""The scheduler's circuit breaker, on a fake clock: closed, open, half-open."""

from __future__ import annotations

import random

from exporter.scheduler import BREAKER_THRESHOLD, PROBE_MAX, Schedule, Scheduler
from exporter.sources import PollResult
from tests.conftest import FakeTime


def _scheduler(n: int = 5) -> tuple[Scheduler, FakeTime]:
    clock = FakeTime(100.0)
    sched = Scheduler(Schedule(poll_interval=1.0, idle_poll_interval=10.0), clock, random.Random(1))
    sched.sync({f"t{i}": "threads" for i in range(n)})
    return sched, clock


def _finish(sched: Scheduler, clock: FakeTime, scope: str, reached: bool) -> None:
    sched.finished(PollResult(scope, "ok" if reached else "error", api_reached=reached, started=clock.now),
                   active=False)


def _refused(sched: Scheduler, clock: FakeTime, scopes: list[str]) -> None:
    for scope in scopes:
        _finish(sched, clock, scope, reached=False)


def test_the_breaker_opens_after_consecutive_unreached_polls_and_then_polls_nothing() -> None:
    sched, clock = _scheduler()
    assert sched.due(lambda _: False) == ["t0", "t1", "t2", "t3", "t4"]
    _refused(sched, clock, ["t0", "t1"])
    assert sched.breaker("threads").state == "closed"  # two in a row are not enough
    _finish(sched, clock, "t2", reached=True)  # an answer resets the count
    _refused(sched, clock, ["t3", "t4"])
    assert sched.breaker("threads").state == "closed"
    _refused(sched, clock, ["t0"])
    assert sched.breaker("threads").state == "open"
    assert sched.breaker("threads").failures == BREAKER_THRESHOLD
    clock.now += 0.5
    assert sched.due(lambda _: False) == []  # t2 is not due yet, the others are paused
    assert sched.next_wake() == 0.25  # the tick, not a busy loop on the paused scopes


def test_one_probe_at_a_time_with_a_doubling_delay_and_a_cap() -> None:
    sched, clock = _scheduler()
    _refused(sched, clock, ["t0", "t1", "t2"])
    breaker = sched.breaker("threads")
    gaps = []
    opened = clock.now
    for _ in range(8):
        clock.now = breaker.probe_at
        probe = sched.due(lambda _: False)
        assert len(probe) == 1 and breaker.state == "half_open" and breaker.probe == probe[0]
        assert sched.due(lambda _: False) == []  # nothing else while the probe is out
        gaps.append(clock.now - opened)
        opened = clock.now
        _refused(sched, clock, probe)
        assert sched.breaker("threads").state == "open"
    assert gaps == [1.0, 2.0, 4.0, 8.0, PROBE_MAX, PROBE_MAX, PROBE_MAX, PROBE_MAX]


def test_a_probe_that_reaches_the_api_closes_the_breaker_and_releases_every_backed_off_scope() -> None:
    sched, clock = _scheduler()
    for _ in range(4):  # every scope backs off on its own before the breaker opens
        _refused(sched, clock, list(sched.slots))
    assert min(slot.due for slot in sched.slots.values()) > clock.now + 1.0
    clock.now = sched.breaker("threads").probe_at
    [probe] = sched.due(lambda _: False)
    _finish(sched, clock, probe, reached=True)
    assert sched.breaker("threads").state == "closed"
    clock.now += 0.1
    assert sorted(sched.due(lambda _: False)) == sorted(set(sched.slots) - {probe})
    assert all(slot.failures == 0 for slot in sched.slots.values())


def test_a_probe_whose_scope_leaves_or_whose_task_raises_does_not_wedge_the_breaker() -> None:
    sched, clock = _scheduler()
    _refused(sched, clock, ["t0", "t1", "t2"])
    clock.now = sched.breaker("threads").probe_at
    [probe] = sched.due(lambda _: False)
    sched.sync({s: "threads" for s in sched.slots if s != probe})
    assert sched.breaker("threads").state == "open"
    [probe] = sched.due(lambda _: False)  # another scope probes at once
    sched.failed(probe)
    assert sched.breaker("threads").state == "open"


def test_each_source_has_its_own_breaker() -> None:
    clock = FakeTime(100.0)
    sched = Scheduler(Schedule(poll_interval=1.0, idle_poll_interval=10.0), clock, random.Random(1))
    sched.sync({"a1": "a", "a2": "a", "a3": "a", "b1": "b"})
    _refused(sched, clock, ["a1", "a2", "a3"])
    assert sched.breaker("a").state == "open" and sched.breaker("b").state == "closed"
    clock.now += 0.5
    assert sched.due(lambda _: False) == ["b1"]
