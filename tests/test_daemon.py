"""The poll loop with a fake source: scheduling, isolation of failing threads, the threads file, bad input."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from exporter.config import threads_file_ids
from exporter.daemon import Daemon, Schedule, ThreadsFileWatcher
from exporter.metrics import SnapshotCollector
from exporter.model import RunSnapshot
from exporter.sources import PollResult, StopRule
from exporter.sources.assistants import ApiSettings, AssistantsSource
from exporter.store import Store
from exporter.tracker import Tracker

Behaviour = Callable[[str], Awaitable[PollResult]]


class FakeSource:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.polls: Counter[str] = Counter()
        self.closed = False

    async def poll_thread(self, thread_id: str, stop: StopRule) -> PollResult:
        self.polls[thread_id] += 1
        return await self.behaviour(thread_id)

    async def aclose(self) -> None:
        self.closed = True


async def ok(thread_id: str) -> PollResult:
    return PollResult(thread_id, "ok", complete=True, api_reached=True, started=time.monotonic())


def _daemon(tmp_path: Path, source: FakeSource, threads: Sequence[str] = (), threads_file: Path | None = None,
            poll: float = 0.05, idle: float = 0.05) -> Daemon:
    return Daemon(
        source=source,  # type: ignore[arg-type]
        tracker=Tracker(["assistant_id"], 3600),
        store=Store(tmp_path / "state.db", ["assistant_id"]),
        collector=SnapshotCollector(),
        schedule=Schedule(poll, idle),
        static_threads=threads,
        threads_file=ThreadsFileWatcher(threads_file, threads_file_ids) if threads_file else None,
    )


async def _run_until(daemon: Daemon, done: Callable[[], bool], timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "condition not reached before the deadline"
            await asyncio.sleep(0.01)  # polling interval under a deadline
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_a_hanging_thread_never_stalls_the_others(tmp_path: Path) -> None:
    async def behaviour(thread_id: str) -> PollResult:
        if thread_id == "stuck":
            await asyncio.Event().wait()  # never answers
        return await ok(thread_id)

    source = FakeSource(behaviour)
    daemon = _daemon(tmp_path, source, ["stuck", "a", "b"])
    asyncio.run(_run_until(daemon, lambda: source.polls["a"] >= 5 and source.polls["b"] >= 5))
    assert source.polls["stuck"] == 1
    assert source.closed  # shutdown cancels the hung poll and closes the source


def test_failing_threads_back_off_and_gone_threads_are_polled_rarely(tmp_path: Path) -> None:
    async def behaviour(thread_id: str) -> PollResult:
        if thread_id == "failing":
            return PollResult(thread_id, "error", error="server error (500) after 3 attempts", started=time.monotonic())
        if thread_id == "deleted":
            return PollResult(thread_id, "gone", api_reached=True, started=time.monotonic())
        return await ok(thread_id)

    source = FakeSource(behaviour)
    daemon = _daemon(tmp_path, source, ["failing", "deleted", "fine"])
    asyncio.run(_run_until(daemon, lambda: source.polls["fine"] >= 30))
    assert source.polls["deleted"] == 1
    assert 2 <= source.polls["failing"] <= 8  # 0.05 s doubling: far fewer than the healthy thread's 30
    assert daemon.slots["failing"].failures == source.polls["failing"]
    assert daemon.tracker.thread_states() == {"active": 0, "idle": 2, "gone": 1}


def test_threads_file_changes_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "threads.txt"
    path.write_text("one\n# a comment\ntwo\n")
    source = FakeSource(ok)
    daemon = _daemon(tmp_path, source, threads_file=path)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        deadline = time.monotonic() + 10
        while source.polls["two"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        path.write_text("two\nthree\n")
        while source.polls["three"] < 1 or "one" in daemon.slots:
            assert time.monotonic() < deadline, "threads file change not picked up"
            await asyncio.sleep(0.01)
        path.unlink()  # unreadable later: the last good list is kept
        before = source.polls["three"]
        while source.polls["three"] < before + 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert set(daemon.slots) == {"two", "three"}
    assert "one" not in daemon.tracker.threads


def test_invalid_objects_are_counted_and_logged_once_a_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def behaviour(thread_id: str) -> PollResult:
        return PollResult(thread_id, "ok", complete=True, api_reached=True, invalid={"wrong_type": 2},
                          started=time.monotonic())

    source = FakeSource(behaviour)
    daemon = _daemon(tmp_path, source, ["t"])
    with caplog.at_level(logging.WARNING, logger="exporter.daemon"):
        asyncio.run(_run_until(daemon, lambda: source.polls["t"] >= 5))
    counted = daemon.tracker.aggregates.counter("assistants_exporter_invalid_objects_total", ("wrong_type",))
    assert counted == 2 * daemon.health.polls_applied >= 8
    assert sum("wrong_type" in r.getMessage() for r in caplog.records) == 1


def test_counts_are_committed_and_survive_a_new_daemon(tmp_path: Path) -> None:
    t0 = int(time.time())

    async def behaviour(thread_id: str) -> PollResult:
        runs = [] if source.polls[thread_id] == 1 else [
            RunSnapshot("r1", thread_id, "completed", t0, assistant_id="a", completed_at=t0 + 1)]
        return PollResult(thread_id, "ok", runs, complete=True, api_reached=True, started=time.monotonic())

    source = FakeSource(behaviour)
    daemon = _daemon(tmp_path, source, ["t"])
    asyncio.run(_run_until(daemon, lambda: source.polls["t"] >= 3))
    daemon.store.close()
    loaded = Store(tmp_path / "state.db", ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "a")) == 1
    assert loaded.aggregates.histograms[("assistants_exporter_poll_duration_seconds", ())].count >= 3


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
        result = await source.poll_thread("t", lambda seen: tracker.should_stop("t", seen))
        tracker.observe("t", result.runs, time.time(), complete=result.complete, ok=result.outcome == "ok")
        return len(requests) - before

    async def scenario() -> list[int]:
        counts = [await poll() for _ in range(3)]
        await source.aclose()
        return counts

    assert asyncio.run(scenario()) == [3, 1, 1]
    assert all(r.url.params["order"] == "desc" and r.url.params["limit"] == "100" for r in requests)


def test_ready_after_the_first_poll_that_reaches_the_api_and_stays_ready(tmp_path: Path) -> None:
    api_answers = asyncio.Event()

    async def behaviour(thread_id: str) -> PollResult:
        if not api_answers.is_set():
            return PollResult(thread_id, "error", error="connection_error", started=time.monotonic())
        if source.polls[thread_id] % 2:
            return await ok(thread_id)
        return PollResult(thread_id, "error", error="timeout", started=time.monotonic())

    source = FakeSource(behaviour)
    daemon = _daemon(tmp_path, source, ["t"], poll=0.01)
    assert daemon.ready() == (False, "starting")

    async def scenario() -> None:
        async def until(done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 10
            while not done():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)  # polling interval under a deadline
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await until(lambda: daemon.health.polls_applied >= 2)
        assert daemon.ready() == (False, "waiting for the first poll that reaches the API")
        api_answers.set()
        await until(lambda: daemon.health.reached_api and daemon.state.api_up == 0.0)
        assert daemon.ready() == (True, "ok")  # the outage shows in the metric, not in readiness
        assert daemon.healthy()[0]
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_an_idle_loop_writes_nothing_and_still_refreshes_metrics(tmp_path: Path) -> None:
    async def hang(thread_id: str) -> PollResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    source = FakeSource(hang)
    daemon = _daemon(tmp_path, source, ["t"])
    commits: list[float] = []
    real_commit = daemon.store.commit
    daemon.store.commit = lambda *a, **k: (commits.append(time.monotonic()), real_commit(*a, **k))[1]  # type: ignore[method-assign]
    publishes: list[float] = []
    real_update = daemon.collector.update
    daemon.collector.update = lambda fams: (publishes.append(time.monotonic()), real_update(fams))[1]  # type: ignore[method-assign]
    start = time.monotonic()
    asyncio.run(_run_until(daemon, lambda: time.monotonic() - start > 2.5))
    assert len(commits) <= 2  # the first tick (thread registered) and the shutdown
    assert 3 <= len(publishes) <= 6  # about once a second
