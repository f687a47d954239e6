"""The commit on the writer thread: the loop hands a copy of the change set over and goes on; requests are
answered only once their write has ended; a write in flight is one at a time, and what it holds is still
recognised while it runs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from exporter.changeset import ChangeSet
from exporter.committer import Committer, ThreadWriter
from exporter.daemon import Daemon
from exporter.health import Health
from exporter.inbox import RunItems
from exporter.metrics import SnapshotCollector
from exporter.model import RunSnapshot
from exporter.runstate import Changes, Remembered, RunState
from exporter.scheduler import Schedule
from exporter.selfmetrics import SelfMetrics
from exporter.statuses import is_terminal
from exporter.store import Store
from exporter.storewrites import statements
from exporter.tracker import Tracker
from exporter.watchlist import WatchList

WALL = 1_700_000_000.0


class GatedStore(Store):
    """A store whose writes wait for the test to let them through, and say on which thread they ran."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, [])
        self.gate = threading.Event()
        self.threads: list[str] = []

    def write(self, statements: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(30), "the test never opened the gate"
        super().write(statements)


def _remembered_changes() -> ChangeSet:
    return ChangeSet(Changes(remembered={"r1": Remembered("r1", "push", "completed", WALL)}))


def test_a_write_runs_on_the_writer_thread_one_at_a_time_and_its_runs_are_recalled_meanwhile(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.db")
    handed = [_remembered_changes()]
    health = Health()
    committer = Committer(store, (lambda: handed.pop() if handed else ChangeSet(),),
                          SelfMetrics(Tracker([], 60.0).aggregates), health, lambda: WALL, lambda: 0.0, ThreadWriter())
    woken = threading.Event()
    committer.on_done = woken.set
    assert committer.start()
    assert committer.collect() is None  # still being written
    assert not committer.start()  # one write at a time: later changes wait with their owners
    assert committer.recall(["r1"])["r1"].status == "completed"  # the write in flight is not forgotten
    assert store.recall(["r1"]) == {}  # the file does not have it yet
    store.gate.set()
    assert woken.wait(30)
    assert committer.collect() is True
    assert store.threads == ["state-writer_0"]
    assert store.recall(["r1"])["r1"].status == "completed"
    committer.close()
    store.close()


def test_the_statements_hold_copies_of_the_values_not_the_live_runs() -> None:
    """Regression guard: the loop changes runs while the writer thread writes; a row must be one moment's."""
    run = RunState("r1", "t1", "in_progress", 10, 10.0, "asst", "model", 10, None, False, "threads")
    prepared = statements(ChangeSet(Changes(runs={"r1": run})), [])
    run.status, run.ended_at = "completed", 20.0
    (sql, rows), = prepared
    assert sql.startswith("INSERT OR REPLACE INTO runs")
    assert rows[0][2] == "in_progress" and rows[0][8] is None


def test_the_loop_goes_on_while_a_write_is_held_and_answers_once_it_ends(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.db")
    daemon = Daemon(sources={}, tracker=Tracker([], 60.0), store=store, collector=SnapshotCollector(),
                    schedule=Schedule(1.0, 10.0), watchlist=WatchList(()), run_sources=("push",),
                    writer=ThreadWriter())
    now = int(time.time())  # the daemon's own clock: a run that ended long ago would be stale

    def push(run_id: str) -> RunItems:
        return RunItems([RunSnapshot(run_id, "", "completed", now - 60, completed_at=now, source="push")], [],
                        "push")

    async def until(condition: str, check: object) -> None:
        for _ in range(20_000):
            if callable(check) and check():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"never: {condition}")

    async def scenario() -> None:
        stop = asyncio.Event()
        loop_task = asyncio.create_task(daemon.run(stop))
        first = asyncio.create_task(daemon.inbox.submit(push("r1"), 30))
        await until("the write is in flight", lambda: store.threads)
        ticks = daemon.health.last_tick
        second = asyncio.create_task(daemon.inbox.submit(push("r2"), 30))
        await until("the loop ticks on", lambda: daemon.health.last_tick > ticks and "r2" in daemon.tracker.runs)
        assert not first.done() and not second.done()  # nothing is answered before it is in the file
        assert is_terminal(daemon.tracker.runs["r2"].status)  # applied on the loop meanwhile
        store.gate.set()
        assert (await first).outcome.accepted == 1  # type: ignore[union-attr]
        assert (await second).outcome.accepted == 1  # type: ignore[union-attr]
        assert len(store.threads) == 2  # r2 in the next write, not merged into the one in flight
        stop.set()
        await loop_task

    asyncio.run(scenario())
    loaded = Store(tmp_path / "state.db", []).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "push")) == 2
