"""By-id polling in the loop, on the fake clock: a registered response is fetched every poll interval until it
ends (then it leaves the watch list), a 404 drops it uncounted, failures back off, and webhook events wait
for the fetch of their response (or count on their own when it fails), deduplicated by webhook-id."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from exporter import metrics_spec as m
from exporter.daemon import Daemon
from exporter.inbox import Delivery, Registration, RunItems
from exporter.metrics import SnapshotCollector
from exporter.model import RunSnapshot
from exporter.scheduler import Schedule
from exporter.sources import FetchResult
from exporter.sources.webhook_policy import FETCH_ATTEMPTS_BEFORE_EVENT
from exporter.sources.webhooks import DeliveryLog, event_snapshot
from exporter.store import Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList
from tests.conftest import WALL0
from tests.conftest import FakeTime as Clock
from tests.test_daemon import _drive


class FakeById:
    """Answers fetches from a script: response id -> list of results by fake time (the last one sticks)."""

    name = "responses"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.answers: dict[str, list[tuple[float, FetchResult]]] = {}
        self.fetches: Counter[str] = Counter()
        self.closed = False

    def script(self, run_id: str, *steps: tuple[float, FetchResult]) -> None:
        self.answers[run_id] = list(steps)

    async def fetch(self, run_id: str) -> FetchResult:
        self.fetches[run_id] += 1
        current = FetchResult(run_id, "error", error="unscripted")
        for since, result in self.answers.get(run_id, []):
            if self.clock.mono >= since:
                current = result
        return current

    async def aclose(self) -> None:
        self.closed = True


def _daemon(tmp_path: Path, clock: Clock, with_api: bool = True) -> tuple[Daemon, FakeById]:
    source = FakeById(clock)
    daemon = Daemon(
        sources={},
        by_id={"responses": source} if with_api else {},
        tracker=Tracker([], 3600, dedupe_window=DEDUPE_WINDOW),
        store=Store(tmp_path / "state.db", []),
        collector=SnapshotCollector(),
        schedule=Schedule(1.0, 10.0),
        watchlist=WatchList(),
        deliveries=DeliveryLog(),
        wall=clock.wall,
        mono=clock.monotonic,
    )
    return daemon, source


def _resp(clock: Clock, run_id: str, status: str, created: float, **kw: object) -> FetchResult:
    """A Response created `created` seconds after the test's start (fake monotonic 1000)."""
    snap = RunSnapshot(run_id, "", status, int(WALL0 + 1000 + created), source="responses",
                       **kw)  # type: ignore[arg-type]
    return FetchResult(run_id, "ok", run=snap, api_reached=True)


def _counter(daemon: Daemon, metric: str, labels: tuple[str, ...]) -> float:
    return daemon.tracker.aggregates.counters.get((metric, labels), 0.0)


def _register(daemon: Daemon, run_id: str) -> None:
    daemon.inbox._pending.append(_pending(Registration(run_id, "responses", True)))


def _pending(item: Registration | RunItems | Delivery) -> object:
    from exporter.inbox import Pending

    return Pending(item, asyncio.get_event_loop().create_future())


async def _scenario_terminal(tmp_path: Path) -> tuple[Daemon, FakeById]:
    clock = Clock()
    daemon, source = _daemon(tmp_path, clock)
    source.script("resp_1", (0, _resp(clock, "resp_1", "queued", 0)),
                  (1005, _resp(clock, "resp_1", "in_progress", 0)),
                  (1010, _resp(clock, "resp_1", "failed", 0, error_code="server_error")))
    await _drive(daemon, clock, 0.1)
    _register(daemon, "resp_1")
    await _drive(daemon, clock, 30.0)
    return daemon, source


def test_a_registered_response_is_polled_each_interval_until_it_ends_then_leaves(tmp_path: Path) -> None:
    daemon, source = asyncio.run(_scenario_terminal(tmp_path))
    # Fetched once a second from 1000.2 until it was seen failed at about 1010.2, then never again.
    assert 9 <= source.fetches["resp_1"] <= 11
    assert "resp_1" not in daemon.watchlist.wanted() and "resp_1" not in daemon.scheduler.slots
    assert _counter(daemon, m.RUNS_FINISHED.name, ("failed", "responses")) == 1
    assert _counter(daemon, m.ERRORS.name, ("server_error", "responses")) == 1
    # queued lasted from creation to the first in_progress sighting (sampled at the poll interval)
    hist = daemon.tracker.aggregates.histograms[(m.STATUS_DURATION.name, ("queued", "responses"))]
    assert hist.count == 1 and 5.0 <= hist.sum <= 6.5
    # and the registration's removal was committed: a restart does not poll it again
    loaded = Store(tmp_path / "state.db", []).load()
    assert "resp_1" not in loaded.registrations


def test_a_404_before_the_end_drops_the_response_uncounted(tmp_path: Path) -> None:
    async def go() -> Daemon:
        clock = Clock()
        daemon, source = _daemon(tmp_path, clock)
        source.script("resp_2", (0, _resp(clock, "resp_2", "in_progress", 0)),
                      (1003, FetchResult("resp_2", "gone", api_reached=True)))
        await _drive(daemon, clock, 0.1)
        _register(daemon, "resp_2")
        await _drive(daemon, clock, 1.0)
        assert daemon.tracker.status_counts() == {("in_progress", "responses"): 1}
        await _drive(daemon, clock, 5.0)
        return daemon

    daemon = asyncio.run(go())
    assert daemon.tracker.status_counts() == {}
    assert not any(name == m.RUNS_FINISHED.name for name, _ in daemon.tracker.aggregates.counters)
    assert "resp_2" not in daemon.scheduler.slots


def test_fetch_errors_back_off_and_keep_the_response(tmp_path: Path) -> None:
    async def go() -> tuple[Daemon, FakeById]:
        clock = Clock()
        daemon, source = _daemon(tmp_path, clock)
        source.script("resp_3", (0, FetchResult("resp_3", "error", error="503 after 3 attempts")))
        await _drive(daemon, clock, 0.1)
        _register(daemon, "resp_3")
        await _drive(daemon, clock, 60.0)
        return daemon, source

    daemon, source = asyncio.run(go())
    assert 3 <= source.fetches["resp_3"] <= 7  # 1 s, 2 s, 4 s, ... (jittered) instead of 60 polls
    assert "resp_3" in daemon.scheduler.slots
    assert daemon.state.api_up["responses"] == 0.0


def test_a_pushed_unfinished_response_is_followed_by_id(tmp_path: Path) -> None:
    async def go() -> tuple[Daemon, FakeById]:
        clock = Clock()
        daemon, source = _daemon(tmp_path, clock)
        t0 = int(clock.wall())
        source.script("resp_4", (0, _resp(clock, "resp_4", "completed", 0, completed_at=t0 + 4)))
        await _drive(daemon, clock, 0.1)
        snap = RunSnapshot("resp_4", "", "queued", t0, source="push")
        daemon.inbox._pending.append(_pending(RunItems([snap], [], "push", follow=["resp_4"])))
        await _drive(daemon, clock, 3.0)
        return daemon, source

    daemon, source = asyncio.run(go())
    assert source.fetches["resp_4"] == 1
    # counted once, under the source that first reported it
    assert _counter(daemon, m.RUNS_FINISHED.name, ("completed", "push")) == 1
    assert "resp_4" not in daemon.scheduler.slots


def test_a_webhook_event_waits_for_the_fetch_and_takes_its_end_time(tmp_path: Path) -> None:
    async def go() -> Daemon:
        clock = Clock()
        daemon, source = _daemon(tmp_path, clock)
        t0 = int(clock.wall())
        # The Response says cancelled without an end time; the event's created_at is the end.
        source.script("resp_5", (0, _resp(clock, "resp_5", "cancelled", -20)))
        await _drive(daemon, clock, 0.1)
        event = Delivery("msg_1", "response.cancelled", event_snapshot("resp_5", "cancelled", t0 - 5))
        daemon.inbox._pending.append(_pending(event))
        await _drive(daemon, clock, 0.1)
        assert event.outcome == "accepted" and not daemon.tracker.runs.get("resp_5")  # not counted yet
        await _drive(daemon, clock, 2.0)
        again = Delivery("msg_1", "response.cancelled", event_snapshot("resp_5", "cancelled", t0 - 5))
        daemon.inbox._pending.append(_pending(again))
        await _drive(daemon, clock, 0.2)
        assert again.outcome == "duplicate"
        return daemon

    daemon = asyncio.run(go())
    assert _counter(daemon, m.RUNS_FINISHED.name, ("cancelled", "responses")) == 1
    hist = daemon.tracker.aggregates.histograms[(m.RUN_DURATION.name, ("cancelled", "responses"))]
    assert hist.count == 1 and abs(hist.sum - 15.0) < 0.01  # created 20 s before, ended 5 s before
    assert _counter(daemon, m.WEBHOOKS.name, ("response.cancelled", "accepted")) == 1
    assert _counter(daemon, m.WEBHOOKS.name, ("response.cancelled", "duplicate")) == 1
    assert daemon.deliveries.pending == {}


def test_a_webhook_event_counts_on_its_own_when_the_fetch_keeps_failing(tmp_path: Path) -> None:
    async def go() -> tuple[Daemon, FakeById]:
        clock = Clock()
        daemon, source = _daemon(tmp_path, clock)
        t0 = int(clock.wall())
        source.script("resp_6", (0, FetchResult("resp_6", "error", error="timeout")))
        await _drive(daemon, clock, 0.1)
        daemon.inbox._pending.append(_pending(Delivery("m6", "response.failed",
                                                       event_snapshot("resp_6", "failed", t0))))
        await _drive(daemon, clock, 30.0)
        return daemon, source

    daemon, source = asyncio.run(go())
    assert source.fetches["resp_6"] == FETCH_ATTEMPTS_BEFORE_EVENT
    assert _counter(daemon, m.RUNS_FINISHED.name, ("failed", "webhooks")) == 1
    assert _counter(daemon, m.ERRORS.name, ("unknown", "webhooks")) == 1
    assert "resp_6" not in daemon.scheduler.slots


def test_without_an_api_key_events_count_at_once_and_later_events_of_it_are_not_recounted(tmp_path: Path) -> None:
    async def go() -> tuple[Daemon, list[Delivery]]:
        clock = Clock()
        daemon, _ = _daemon(tmp_path, clock, with_api=False)
        t0 = int(clock.wall())
        events = [Delivery("a", "response.incomplete", event_snapshot("resp_7", "incomplete", t0)),
                  Delivery("b", "response.completed", event_snapshot("resp_7", "completed", t0 + 1)),
                  Delivery("c", "other", None)]
        await _drive(daemon, clock, 0.1)
        for event in events:
            daemon.inbox._pending.append(_pending(event))
        await _drive(daemon, clock, 0.2)
        return daemon, events

    daemon, events = asyncio.run(go())
    assert [e.outcome for e in events] == ["accepted", "stale", "accepted"]
    assert _counter(daemon, m.RUNS_FINISHED.name, ("incomplete", "webhooks")) == 1
    assert _counter(daemon, m.INCOMPLETE.name, ("unknown", "webhooks")) == 1
    # only its end is known: no duration is observed from an event alone
    assert (m.RUN_DURATION.name, ("incomplete", "webhooks")) not in daemon.tracker.aggregates.histograms
    loaded = Store(tmp_path / "state.db", []).load()
    assert set(loaded.deliveries) == {"a", "b", "c"}


def test_with_the_watch_list_full_an_event_counts_on_its_own(tmp_path: Path) -> None:
    async def go() -> Daemon:
        clock = Clock()
        daemon, _ = _daemon(tmp_path, clock)
        daemon.watchlist.max_watched = 1
        daemon.watchlist.register("resp_busy", "responses")
        await _drive(daemon, clock, 0.1)
        daemon.inbox._pending.append(_pending(Delivery("m8", "response.completed",
                                                       event_snapshot("resp_8", "completed", int(clock.wall())))))
        await _drive(daemon, clock, 0.2)
        return daemon

    daemon = asyncio.run(go())
    assert _counter(daemon, m.RUNS_FINISHED.name, ("completed", "webhooks")) == 1
    assert daemon.deliveries.pending == {} and "resp_8" not in daemon.scheduler.slots
