"""The loop with a fake source on a fake clock: scheduling, isolation of failing threads, the threads file,
bad input, store errors, and received updates answered only once committed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from exporter.committer import STORE_RETRY_MIN
from exporter.config import read_threads_file
from exporter.daemon import Daemon
from exporter.inbox import Registration, RunItems, StoreUnavailable
from exporter.metrics import SnapshotCollector
from exporter.model import RunSnapshot
from exporter.publisher import MIN_PUBLISH_GAP
from exporter.scheduler import Schedule
from exporter.sources import DiscoveryResult, PollResult, StopRule
from exporter.sources.assistants import ApiSettings, AssistantsSource
from exporter.store import Store
from exporter.tracker import Tracker
from exporter.watchlist import ThreadsFileWatcher, WatchList
from tests.conftest import WALL0
from tests.conftest import FakeTime as Clock

Behaviour = Callable[[str], Awaitable[PollResult]]


class FakeSource:
    name = "threads"

    def __init__(self, behaviour: Behaviour, clock: Clock) -> None:
        self.behaviour = behaviour
        self.clock = clock
        self.polls: Counter[str] = Counter()
        self.closed = False

    async def poll(self, scope: str, stop: StopRule) -> PollResult:
        self.polls[scope] += 1
        return await self.behaviour(scope)

    async def aclose(self) -> None:
        self.closed = True


def _daemon(tmp_path: Path, behaviour: Behaviour, clock: Clock, threads: Sequence[str] = (),
            threads_file: Path | None = None, poll: float = 1.0, idle: float = 10.0) -> tuple[Daemon, FakeSource]:
    source = FakeSource(behaviour, clock)
    watcher = ThreadsFileWatcher(threads_file, read_threads_file) if threads_file else None
    daemon = Daemon(
        sources={"threads": source},
        tracker=Tracker(["assistant_id"], 3600),
        store=Store(tmp_path / "state.db", ["assistant_id"]),
        collector=SnapshotCollector(),
        schedule=Schedule(poll, idle),
        watchlist=WatchList(threads, watcher),
        wall=clock.wall,
        mono=clock.monotonic,
    )
    return daemon, source


async def _settle() -> None:
    for _ in range(5):  # let the fake polls that were started run to completion
        await asyncio.sleep(0)


async def _drive(daemon: Daemon, clock: Clock, seconds: float, dt: float = 0.1) -> None:
    """Run the loop's steps on the fake clock for `seconds` of fake time."""
    if not daemon.health.started:
        if daemon.watchlist.threads_file is not None:
            daemon.watchlist.threads_file.changed()
        daemon.sync_scopes()
        daemon.health.started = True
    end = clock.mono + seconds
    while clock.mono < end:
        clock.mono = round(clock.mono + dt, 6)
        daemon.launch_due()
        await _settle()
        daemon.step()


def _ok(clock: Clock) -> Behaviour:
    async def ok(scope: str) -> PollResult:
        return PollResult(scope, "ok", complete=True, api_reached=True, started=clock.mono)
    return ok


def test_active_scopes_every_poll_interval_idle_ones_once_per_idle_interval(tmp_path: Path) -> None:
    clock = Clock()
    t0 = int(clock.wall())

    async def behaviour(scope: str) -> PollResult:
        runs = [RunSnapshot("r1", scope, "in_progress", t0, started_at=t0)] if scope == "busy" else []
        return PollResult(scope, "ok", runs, complete=True, api_reached=True, started=clock.mono)

    daemon, source = _daemon(tmp_path, behaviour, clock, ["busy", "quiet"], poll=1.0, idle=10.0)
    asyncio.run(_drive(daemon, clock, 60.0))
    assert source.polls["busy"] == 60  # at 0.1, 1.1, ..., 59.1
    # The first poll at once, the second within one idle interval (its phase drawn at random), then
    # exactly one per idle interval.
    assert 6 <= source.polls["quiet"] <= 7


def test_a_hanging_thread_never_stalls_the_others(tmp_path: Path) -> None:
    clock = Clock()
    ok = _ok(clock)

    async def behaviour(scope: str) -> PollResult:
        if scope == "stuck":
            await asyncio.Event().wait()  # never answers
        return await ok(scope)

    daemon, source = _daemon(tmp_path, behaviour, clock, ["stuck", "a", "b"], poll=1.0, idle=1.0)
    asyncio.run(_drive(daemon, clock, 10.0))
    assert source.polls["stuck"] == 1
    assert source.polls["a"] == source.polls["b"] == 10


def test_failing_threads_back_off_and_gone_threads_are_polled_rarely(tmp_path: Path) -> None:
    clock = Clock()
    ok = _ok(clock)

    async def behaviour(scope: str) -> PollResult:
        if scope == "failing":
            return PollResult(scope, "error", error="server error (500) after 3 attempts", started=clock.mono)
        if scope == "deleted":
            return PollResult(scope, "gone", api_reached=True, started=clock.mono)
        return await ok(scope)

    daemon, source = _daemon(tmp_path, behaviour, clock, ["failing", "deleted", "fine"], poll=1.0, idle=1.0)
    asyncio.run(_drive(daemon, clock, 120.0))
    assert source.polls["fine"] == 120
    assert source.polls["deleted"] == 1  # next after 15 minutes
    # Backoff doubles from 2 s (halved at most by jitter): 1 + 2 + 4 + ... reaches 120 s within 5 to 8 polls.
    assert 5 <= source.polls["failing"] <= 8
    assert daemon.scheduler.slots["failing"].failures == source.polls["failing"]
    assert daemon.tracker.scope_states() == {"active": 0, "idle": 1, "gone": 1, "failing": 1}


def test_threads_file_changes_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "threads.txt"
    path.write_text("one\n# a comment\ntwo\n")
    daemon, source = _daemon(tmp_path, _ok(clock), clock, threads_file=path, idle=1.0)

    async def scenario() -> None:
        await _drive(daemon, clock, 1.0)
        assert source.polls["two"] >= 1
        path.write_text("two\nthree\n")
        await _drive(daemon, clock, 2.0)  # the file is checked once a second
        assert source.polls["three"] >= 1 and "one" not in daemon.scheduler.slots
        path.unlink()  # unreadable later: the last good list is kept
        before = source.polls["three"]
        await _drive(daemon, clock, 3.0)
        assert source.polls["three"] >= before + 2

    asyncio.run(scenario())
    assert set(daemon.scheduler.slots) == {"two", "three"}
    assert "one" not in daemon.tracker.scopes


def test_invalid_objects_are_counted_and_logged_once_a_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    async def behaviour(scope: str) -> PollResult:
        return PollResult(scope, "ok", complete=True, api_reached=True, invalid={"wrong_type": 2}, started=clock.mono)

    daemon, source = _daemon(tmp_path, behaviour, clock, ["t"], idle=1.0)
    with caplog.at_level(logging.WARNING, logger="exporter.daemon"):
        asyncio.run(_drive(daemon, clock, 90.0))
    counted = daemon.tracker.aggregates.counter("assistants_exporter_invalid_objects_total", ("wrong_type",))
    assert counted == 2 * source.polls["t"] == 180
    assert sum("wrong_type" in r.getMessage() for r in caplog.records) == 2  # at 0 s and after a minute


def test_counts_are_committed_and_survive_a_new_daemon(tmp_path: Path) -> None:
    clock = Clock()
    t0 = int(clock.wall())

    async def behaviour(scope: str) -> PollResult:
        runs = [] if source.polls[scope] == 1 else [
            RunSnapshot("r1", scope, "completed", t0, assistant_id="a", completed_at=t0 + 1)]
        return PollResult(scope, "ok", runs, complete=True, api_reached=True, started=clock.mono)

    daemon, source = _daemon(tmp_path, behaviour, clock, ["t"], idle=1.0)
    asyncio.run(_drive(daemon, clock, 3.0))
    daemon.store.close()
    loaded = Store(tmp_path / "state.db", ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "threads", "a")) == 1
    assert loaded.aggregates.histograms[("assistants_exporter_poll_duration_seconds", ())].count == 3


def test_steady_state_poll_of_an_active_thread_is_one_request(tmp_path: Path) -> None:
    """The real source and tracker: the first poll reads all pages, later ones a single page."""
    t0 = int(time.time()) - 1000
    runs = [{"id": f"run_{i:04d}", "object": "thread.run", "thread_id": "t", "status": "completed",
             "created_at": t0 + i, "completed_at": t0 + i + 1, "assistant_id": "a"} for i in range(250)]
    runs.append({"id": "run_live", "object": "thread.run", "thread_id": "t", "status": "in_progress",
                 "created_at": t0 + 300, "started_at": t0 + 301, "assistant_id": "a"})
    newest_first = sorted(runs, key=lambda r: r["created_at"], reverse=True)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        after = request.url.params.get("after")
        start = 0 if after is None else next(i for i, r in enumerate(newest_first) if r["id"] == after) + 1
        page = newest_first[start:start + int(request.url.params["limit"])]
        return httpx.Response(200, json={"object": "list", "data": page, "first_id": page[0]["id"],
                                         "last_id": page[-1]["id"], "has_more": start + len(page) < len(runs)})

    source = AssistantsSource(ApiSettings("http://127.0.0.1:1/v1", "k", max_requests_per_second=1000),
                              transport=httpx.MockTransport(handler))
    tracker = Tracker(["assistant_id"], 3600)

    async def poll() -> int:
        before = len(requests)
        result = await source.poll("t", lambda seen: tracker.should_stop("t", seen))
        tracker.observe_listing("t", result.runs, time.time(), complete=result.complete, ok=result.outcome == "ok")
        return len(requests) - before

    async def scenario() -> list[int]:
        counts = [await poll() for _ in range(3)]
        await source.aclose()
        return counts

    assert asyncio.run(scenario()) == [3, 1, 1]
    assert all(r.url.params["order"] == "desc" and r.url.params["limit"] == "100" for r in requests)


def test_ready_after_the_first_poll_that_reaches_the_api_and_api_up_follows_each_cycle(tmp_path: Path) -> None:
    clock = Clock()
    api_answers = False

    async def behaviour(scope: str) -> PollResult:
        if not api_answers:
            return PollResult(scope, "error", error="connection_error", started=clock.mono)
        return PollResult(scope, "ok", complete=True, api_reached=True, started=clock.mono)

    daemon, _ = _daemon(tmp_path, behaviour, clock, ["t"], poll=1.0)
    assert daemon.ready() == (False, "starting")

    async def scenario() -> None:
        nonlocal api_answers
        await _drive(daemon, clock, 0.5)
        assert daemon.ready() == (False, "waiting for the first poll that reaches the API")
        assert daemon.state.api_up == {"threads": 0.0}
        api_answers = True
        await _drive(daemon, clock, 10.0)
        assert daemon.ready() == (True, "ok") and daemon.state.api_up == {"threads": 1.0}
        api_answers = False
        await _drive(daemon, clock, 30.0)
        assert daemon.ready() == (True, "ok")  # the outage shows in the metric, not in readiness
        assert daemon.state.api_up == {"threads": 0.0}

    asyncio.run(scenario())


def test_an_idle_loop_writes_nothing_and_still_refreshes_metrics(tmp_path: Path) -> None:
    clock = Clock()

    async def hang(scope: str) -> PollResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    daemon, _ = _daemon(tmp_path, hang, clock, ["t"])
    commits: list[float] = []
    real_commit = daemon.store.write
    daemon.store.write = lambda *a, **k: (commits.append(clock.mono), real_commit(*a, **k))[1]  # type: ignore[method-assign]
    publishes: list[float] = []
    real_update = daemon.collector.update_prepared
    daemon.collector.update_prepared = lambda prepare: (publishes.append(clock.mono), real_update(prepare))[1]  # type: ignore[method-assign]
    asyncio.run(_drive(daemon, clock, 10.0))
    assert len(commits) == 1  # the first tick registers the thread; then nothing changes
    assert len(publishes) == 10  # once a second


def test_run_stops_on_the_event_and_closes_the_source(tmp_path: Path) -> None:
    clock = Clock()

    async def hang(scope: str) -> PollResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    daemon, source = _daemon(tmp_path, hang, clock, ["t"])

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        while source.polls["t"] < 1:
            await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert source.closed  # shutdown cancels the hung poll and closes the source


# -- received updates and the store ------------------------------------------------------------


def _runs(*items: tuple[str, str]) -> RunItems:
    t0 = int(WALL0)
    return RunItems([RunSnapshot(rid, "", status, t0, source="push") for rid, status in items], [], "push")


def test_received_items_are_answered_after_one_group_commit(tmp_path: Path) -> None:
    clock = Clock()
    daemon, _ = _daemon(tmp_path, _ok(clock), clock)
    commits: list[int] = []
    real_commit = daemon.store.write
    daemon.store.write = lambda *a, **k: (commits.append(1), real_commit(*a, **k))[1]  # type: ignore[method-assign]

    async def scenario() -> list[RunItems | Registration]:
        daemon.sync_scopes()
        waiting = [asyncio.create_task(daemon.inbox.submit(_runs((f"r{i}", "completed"), (f"r{i}", "completed")), 5))
                   for i in range(20)]
        await _settle()
        assert not any(t.done() for t in waiting)  # nothing answered before the commit
        daemon.step()
        return await asyncio.gather(*waiting)

    done = asyncio.run(scenario())
    assert len(commits) == 1  # twenty requests, one transaction
    assert all(isinstance(d, RunItems) and (d.outcome.accepted, d.outcome.duplicates) == (1, 1) for d in done)
    loaded = Store(tmp_path / "state.db", ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "push", "")) == 20


def test_a_stream_of_received_items_is_published_at_most_every_gap_and_none_is_left_out(tmp_path: Path) -> None:
    clock = Clock()
    daemon, _ = _daemon(tmp_path, _ok(clock), clock)
    publishes: list[float] = []
    real_update = daemon.collector.update_prepared
    daemon.collector.update_prepared = lambda prepare: (publishes.append(clock.mono), real_update(prepare))[1]  # type: ignore[method-assign]

    async def scenario() -> None:
        daemon.sync_scopes()
        daemon.publish()
        for i in range(100):  # one request every 10 ms for a second: a tick each
            clock.mono = round(clock.mono + 0.01, 6)
            waiting = asyncio.create_task(daemon.inbox.submit(_runs((f"r{i}", "completed")), 5))
            await _settle()
            daemon.step()
            await waiting
        last = clock.mono
        clock.mono = round(clock.mono + MIN_PUBLISH_GAP, 6)
        await asyncio.wait_for(daemon._wait(), 0.5)  # the loop wakes for the pending publish, not after a tick
        daemon.step()
        assert publishes[-1] > last  # the last request's run was published

    asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(publishes)]
    assert min(gaps) >= MIN_PUBLISH_GAP - 1e-9  # a hundred ticks, about six builds instead of a hundred
    assert len(publishes) <= 1 + 1.0 / MIN_PUBLISH_GAP + 1
    families = {f.name: f for f in daemon.collector.collect()}
    finished = sum(s.value for s in families["assistants_runs_finished"].samples if s.name.endswith("_total"))
    assert finished == 100


def test_a_failing_store_keeps_the_batch_retries_and_says_why(tmp_path: Path) -> None:
    """Regression: one SQLite error used to make the loop raise after the batch was taken from the tracker."""
    clock = Clock()
    daemon, _ = _daemon(tmp_path, _ok(clock), clock)
    real_commit = daemon.store.write
    failing = True

    def commit(*args: object, **kwargs: object) -> None:
        if failing:
            raise sqlite3.OperationalError("database or disk is full")
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    daemon.store.write = commit  # type: ignore[assignment]

    async def scenario() -> None:
        nonlocal failing
        daemon.sync_scopes()
        daemon.health.started = True
        first = asyncio.create_task(daemon.inbox.submit(_runs(("r1", "completed")), 5))
        await _settle()
        daemon.step()
        await _settle()
        assert not first.done()
        ready, reason = daemon.ready()
        assert not ready and "database or disk is full" in reason and "state.db" in reason
        assert daemon.tracker.aggregates.counter("assistants_exporter_store_errors_total", ()) == 1
        second = asyncio.create_task(daemon.inbox.submit(_runs(("r2", "failed")), 5))
        await _settle()
        daemon.step()  # within the backoff: no new attempt
        assert daemon.tracker.aggregates.counter("assistants_exporter_store_errors_total", ()) == 1
        failing = False
        clock.mono += STORE_RETRY_MIN * 2
        daemon.step()
        assert (await first).outcome.accepted == 1 and (await second).outcome.accepted == 1  # type: ignore[union-attr]
        assert daemon.health.store_error is None

    asyncio.run(scenario())
    loaded = Store(tmp_path / "state.db", ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "push", "")) == 1
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("failed", "push", "")) == 1


def test_a_request_that_cannot_be_committed_in_time_is_told_to_retry(tmp_path: Path) -> None:
    clock = Clock()
    daemon, _ = _daemon(tmp_path, _ok(clock), clock)

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable):
            await daemon.inbox.submit(_runs(("r1", "completed")), 0.01)  # nobody steps the loop

    asyncio.run(scenario())


def test_registrations_are_persisted_and_capped(tmp_path: Path) -> None:
    clock = Clock()
    daemon, source = _daemon(tmp_path, _ok(clock), clock, ["static"])
    daemon.watchlist.max_watched = 2

    async def scenario() -> list[str]:
        daemon.sync_scopes()
        items = [Registration("t_new", "threads", True), Registration("t_more", "threads", True),
                 Registration("static", "threads", True), Registration("t_none", "threads", False)]
        waiting = [asyncio.create_task(daemon.inbox.submit(i, 5)) for i in items]
        await _settle()
        daemon.step()
        done = await asyncio.gather(*waiting)
        await _drive(daemon, clock, 0.5)
        return [d.result for d in done if isinstance(d, Registration)]

    assert asyncio.run(scenario()) == ["added", "full", "exists", "missing"]
    assert source.polls["t_new"] == 1
    assert Store(tmp_path / "state.db", ["assistant_id"]).load().registrations == {"t_new": "threads",
                                                                                   "static": "threads"}


# -- discovery -------------------------------------------------------------------------------------


class FakeDiscovery:
    name = "threads"
    lookback = 3600.0

    def __init__(self) -> None:
        self.passes: list[list[tuple[str, int]]] = []  # what each pass returns
        self.calls = 0

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
        self.calls += 1
        found = self.passes.pop(0) if self.passes else []
        return DiscoveryResult([s for s in found if not is_known(s[0])], api_reached=True)


def test_discovered_threads_join_the_watch_list_and_new_ones_are_born_watched(tmp_path: Path) -> None:
    clock = Clock()
    now = int(clock.wall())
    discovery = FakeDiscovery()
    discovery.passes = [[("t_old", now - 100)], [("t_new", now + 5), ("t_old", now - 100)]]
    daemon, source = _daemon(tmp_path, _ok(clock), clock, idle=1.0)
    daemon.discoveries = (discovery,)
    daemon.discover_interval = 10.0
    asyncio.run(_drive(daemon, clock, 15.0))
    assert discovery.calls == 2  # at 0 s and 10 s
    assert set(daemon.scheduler.slots) == {"t_old", "t_new"} and source.polls["t_new"] >= 1
    assert daemon.tracker.scopes["t_new"].covered == now + 5  # created after the first pass: born watched
    assert daemon.tracker.aggregates.counter("assistants_exporter_discovered_threads_total", ()) == 2
    loaded = Store(tmp_path / "state.db", ["assistant_id"]).load()
    assert set(loaded.discovered) == {"t_old", "t_new"}
    assert float(loaded.meta["discovered_since:threads"]) == WALL0 + 1000.0 + 10.1  # the second pass's start


def test_a_born_watched_threads_finished_runs_all_count(tmp_path: Path) -> None:
    clock = Clock()
    now = int(clock.wall())

    async def behaviour(scope: str) -> PollResult:
        runs = [RunSnapshot("r1", scope, "completed", now + 3, completed_at=now + 4)] if scope == "t_new" else []
        return PollResult(scope, "ok", runs, complete=True, api_reached=True, started=clock.mono)

    discovery = FakeDiscovery()
    discovery.passes = [[], [("t_new", now + 2)]]
    daemon, _ = _daemon(tmp_path, behaviour, clock, idle=1.0)
    daemon.discoveries = (discovery,)
    daemon.discover_interval = 10.0
    asyncio.run(_drive(daemon, clock, 12.0))
    # Finished before its first poll, yet counted: the thread was created while discovery watched.
    assert daemon.tracker.aggregates.counter("assistants_runs_finished_total", ("completed", "threads", "")) == 1


def test_idle_discovered_threads_older_than_the_lookback_leave(tmp_path: Path) -> None:
    clock = Clock()
    now = int(clock.wall())
    discovery = FakeDiscovery()
    discovery.passes = [[("t_stale", now - 7200), ("t_fresh", now - 60)]]
    daemon, _ = _daemon(tmp_path, _ok(clock), clock, idle=1.0)
    daemon.discoveries = (discovery,)
    daemon.discover_interval = 5.0
    asyncio.run(_drive(daemon, clock, 6.0))
    assert set(daemon.scheduler.slots) == {"t_fresh"}
    assert set(daemon.watchlist.discovered) == {"t_fresh"}


def test_a_discovered_thread_that_changed_within_the_lookback_stays_however_old(tmp_path: Path) -> None:
    clock = Clock()
    now = int(clock.wall())

    class Active(FakeDiscovery):
        async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
            result = await super().discover(is_known)
            result.active = {"t_busy": now - 30, "t_quiet": now - 7000}  # LangGraph's updated_at
            return result

    discovery = Active()
    discovery.passes = [[("t_busy", now - 7200), ("t_quiet", now - 7200)]]
    daemon, _ = _daemon(tmp_path, _ok(clock), clock, idle=1.0)
    daemon.discoveries = (discovery,)
    daemon.discover_interval = 5.0
    asyncio.run(_drive(daemon, clock, 6.0))
    assert set(daemon.scheduler.slots) == {"t_busy"}
    assert daemon.watchlist.discovered == {"t_busy": ("threads", now - 30)}
    assert Store(tmp_path / "state.db", ["assistant_id"]).load().discovered == {"t_busy": ("threads", now - 30)}


def test_a_thread_whose_last_poll_failed_is_failing_not_idle(tmp_path: Path) -> None:
    clock = Clock()
    ok = _ok(clock)
    broken = {"bad-key"}

    async def behaviour(scope: str) -> PollResult:
        if scope in broken:
            return PollResult(scope, "error", error="authentication failed (401)", started=clock.mono)
        return await ok(scope)

    daemon, _ = _daemon(tmp_path, behaviour, clock, ["bad-key", "fine"], poll=1.0, idle=1.0)
    asyncio.run(_drive(daemon, clock, 5.0))
    assert daemon.tracker.scope_states() == {"active": 0, "idle": 1, "gone": 0, "failing": 1}
    page = daemon.collector.collect()
    threads = {s.labels["state"]: s.value for f in page if f.name == "assistants_exporter_threads"
               for s in f.samples}
    assert threads == {"active": 0, "idle": 1, "gone": 0, "failing": 1}
    broken.clear()  # the key is fixed: the next poll succeeds and the thread is idle again
    asyncio.run(_drive(daemon, clock, 300.0))
    assert daemon.tracker.scope_states() == {"active": 0, "idle": 2, "gone": 0, "failing": 0}


def test_poll_failures_are_logged_once_a_minute_per_kind_with_a_count(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    async def behaviour(scope: str) -> PollResult:
        if scope.startswith("m"):  # the API answers, with a page that is not a runs page
            return PollResult(scope, "error", error="malformed page", api_reached=True, started=clock.mono)
        return PollResult(scope, "error", error=f"timeout (ReadTimeout) after {len(scope)} attempts",
                          started=clock.mono)

    threads = [f"m{i}" for i in range(6)] + ["t1", "t22"]
    daemon, source = _daemon(tmp_path, behaviour, clock, threads, poll=0.1, idle=0.1)
    with caplog.at_level(logging.WARNING, logger="exporter.daemon"):
        asyncio.run(_drive(daemon, clock, 130.0))
    lines = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    malformed = [line for line in lines if "malformed page" in line]
    timeouts = [line for line in lines if "timeout" in line]
    # At most one line a minute per kind (at 0 s, then the first failure past 60 s and past 120 s: the
    # threads back off, so there may be no failure between 120 s and 130 s); the attempt count is no kind.
    assert 2 <= len(malformed) <= 3
    assert 2 <= len(timeouts) <= 3
    polls = sum(n for scope, n in source.polls.items() if scope.startswith("m"))
    suppressed = [int(line.split("(")[-1].split()[0]) for line in malformed[1:]]
    # Every failure is either logged, or counted in the next line, or waiting for it.
    assert sum(suppressed) + len(malformed) + daemon.applier.poll_failure_log.pending("malformed page") == polls
    assert all("not logged" in line for line in malformed[1:])


def test_after_an_outage_one_probe_finds_the_api_back_and_every_thread_follows_within_a_poll_interval(
        tmp_path: Path) -> None:
    clock = Clock()
    back_at = clock.mono + 30.0  # connections are refused for 30 s
    succeeded: dict[str, float] = {}
    during_outage: list[float] = []

    async def behaviour(scope: str) -> PollResult:
        if clock.mono < back_at:
            during_outage.append(clock.mono)
            return PollResult(scope, "error", error="connection error (ConnectError) after 3 attempts",
                              started=clock.mono)
        succeeded.setdefault(scope, clock.mono)
        return PollResult(scope, "ok", complete=True, api_reached=True, started=clock.mono)

    threads = [f"t{i}" for i in range(10)]
    daemon, _ = _daemon(tmp_path, behaviour, clock, threads, poll=1.0, idle=5.0)
    asyncio.run(_drive(daemon, clock, 60.0))
    first = min(succeeded.values())
    # The probes back off while the API stays away, so the first success comes within the last probe gap.
    assert first - back_at <= 30.0
    assert sorted(succeeded) == threads
    assert max(succeeded.values()) - first <= 1.0  # every thread within one poll interval of the probe
    assert daemon.state.api_up["threads"] == 1.0
    # While the circuit is open, one probe at a time: far fewer requests than ten threads backing off alone.
    late = [t for t in during_outage if t >= clock.mono - 60.0 + 5.0]
    assert len(late) <= 6


class HangingSource(FakeSource):
    """Answers until `hang_at`, then never; says it is stalled once a request has waited STALL s."""

    STALL = 5.0

    def __init__(self, clock: Clock, hang_at: float) -> None:
        super().__init__(self._behaviour, clock)
        self.hang_at = hang_at
        self.waiting_since: float | None = None

    async def _behaviour(self, scope: str) -> PollResult:
        if self.clock.mono >= self.hang_at:
            if self.waiting_since is None:
                self.waiting_since = self.clock.mono
            await asyncio.Event().wait()
        return PollResult(scope, "ok", complete=True, api_reached=True, started=self.clock.mono)

    def stalled(self) -> bool:
        return self.waiting_since is not None and self.clock.mono - self.waiting_since >= self.STALL


def test_api_up_drops_while_polls_hang_without_waiting_for_them_to_end(tmp_path: Path) -> None:
    clock = Clock()
    hang_at = clock.mono + 5.0
    daemon, _ = _daemon(tmp_path, _ok(clock), clock, ["a", "b"], poll=1.0, idle=1.0)
    source = HangingSource(clock, hang_at)
    daemon.sources = {"threads": source}
    seen: list[tuple[float, float]] = []

    async def scenario() -> None:
        for _ in range(150):
            await _drive(daemon, clock, 0.1)
            seen.append((clock.mono, daemon.state.api_up.get("threads", -1.0)))

    asyncio.run(scenario())
    assert all(up == 1.0 for t, up in seen if 1.0 <= t < hang_at)
    down = min(t for t, up in seen if t >= hang_at and up == 0.0)
    assert down - hang_at <= 10.0  # max(poll interval, 10 s)
    assert all(up == 0.0 for t, up in seen if t >= down)
