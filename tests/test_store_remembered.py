"""The `remembered` table (schema 5): finished runs past retention leave memory, are still recognised, leave
the file once the dedupe window has passed, and a schema-4 file carries on."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from exporter.daemon import Daemon
from exporter.inbox import RunItems
from exporter.metrics import SnapshotCollector
from exporter.model import RunSnapshot
from exporter.scheduler import Schedule
from exporter.store import SCHEMA_VERSION, Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList
from tests.fixtures.make_state_v4 import HOUR, NOW

FIXTURE = Path(__file__).parent / "fixtures" / "state-v4.db"


def _commit(tracker: Tracker, store: Store) -> None:
    store.commit(tracker.take_changes())


def _observe(tracker: Tracker, store: Store, snap: RunSnapshot, now: float) -> str:
    return tracker.observe_run(snap, now, store.recall(tracker.unknown([snap.id])))


def _push(run_id: str, status: str, ended: int, source: str = "push") -> RunSnapshot:
    ends = {"completed_at": ended} if status == "completed" else {"failed_at": ended}
    return RunSnapshot(run_id, "", status, ended - 60, source=source, **ends)  # type: ignore[arg-type]


def test_a_schema_4_file_carries_on_and_its_finished_runs_move_to_the_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    shutil.copy(FIXTURE, path)
    store = Store(path, [])
    loaded = store.load()
    assert loaded.meta["schema_version"] == str(SCHEMA_VERSION) == "5"
    agg = loaded.aggregates
    assert agg.counter("assistants_runs_finished_total", ("completed", "push")) == 2
    assert agg.counter("assistants_runs_finished_total", ("failed", "push")) == 1
    assert agg.counter("assistants_run_errors_total", ("server_error", "push")) == 1
    assert agg.counter("assistants_run_tokens_total", ("prompt", "push")) == 10
    assert agg.counter("assistants_run_tokens_total", ("completion", "push")) == 5
    assert {r.id for r in loaded.runs} == {
        "run_hist",
        "run_open",
        "push_old_1",
        "push_old_2",
        "push_recent",
        "push_queued",
    }
    assert loaded.registrations == {"thread_a": "threads"} and set(loaded.deliveries) == {"msg_1"}
    assert loaded.pending == {"resp_1": ("completed", int(NOW) - 100)}
    tracker = loaded.tracker((), HOUR, DEDUPE_WINDOW)
    tracker.expire(NOW)
    counts = tracker.status_counts()
    assert counts == {("in_progress", "threads"): 1, ("completed", "push"): 1, ("queued", "push"): 1}
    _commit(tracker, store)
    store.close()

    store = Store(path, [])
    loaded = store.load()
    # The runs past retention of no watched scope left the runs table: a restart does not read them.
    assert {r.id for r in loaded.runs} == {"run_hist", "run_open", "push_recent", "push_queued"}
    assert store.remembered_count() == 2
    tracker = loaded.tracker((), HOUR, DEDUPE_WINDOW)
    tracker.expire(NOW)
    assert "push_old_1" not in tracker.runs
    answers = {
        "push_old_1": _observe(tracker, store, _push("push_old_1", "completed", int(NOW) - 5 * HOUR), NOW),
        "push_old_2": _observe(tracker, store, _push("push_old_2", "completed", int(NOW) - 5 * HOUR), NOW),
        "push_old_2 again": _observe(tracker, store, _push("push_old_2", "failed", int(NOW) - 5 * HOUR), NOW),
        "push_recent": _observe(tracker, store, _push("push_recent", "completed", int(NOW) - 600), NOW),
        "push_stale": _observe(tracker, store, _push("push_stale", "completed", int(NOW) - 80 * HOUR), NOW),
        "push_new": _observe(tracker, store, _push("push_new", "completed", int(NOW) - 10), NOW),
    }
    assert answers == {
        "push_old_1": "duplicate",
        "push_old_2": "stale",
        "push_old_2 again": "duplicate",
        "push_recent": "duplicate",
        "push_stale": "stale",
        "push_new": "accepted",
    }
    assert tracker.known(["push_old_1", "push_queued", "nobody"], store.recall(["push_old_1"])) == {
        "push_old_1": "completed",
        "push_queued": "queued",
    }
    assert tracker.aggregates.counter("assistants_runs_finished_total", ("completed", "push")) == 3
    # The swept history run of the watched thread is still accounted for by its listing.
    hist = RunSnapshot("run_hist", "thread_a", "completed", int(NOW) - 10 * HOUR)
    assert tracker.accounted("thread_a", hist)


def test_the_fixture_is_really_schema_4() -> None:
    with sqlite3.connect(FIXTURE) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
        assert "remembered" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}


def test_remembered_runs_leave_the_table_after_the_window_and_the_file_stays_bounded(tmp_path: Path) -> None:
    """Many windows' worth of churn: freed pages are reused, so the file stops growing once the longest
    ratio window's finish events (one hour, six dedupe windows here) are in it (no incremental vacuum)."""
    path = tmp_path / "state.db"
    store = Store(path, [])
    tracker = store.load().tracker((), 60.0, 600.0)
    now, n = 1_700_000_000.0, 0
    sizes = []
    for _window in range(12):
        for _ in range(60):  # 10 s steps, 50 runs each: 3,000 runs per window
            for _ in range(50):
                assert _observe(tracker, store, _push(f"run_{n:08d}", "completed", int(now)), now) == "accepted"
                n += 1
            now += 10
            tracker.expire(now)
            _commit(tracker, store)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(path.stat().st_size)
        assert store.remembered_count() <= 3000  # only the runs of the last window (minus retention)
    assert len(tracker.runs) <= 350  # retained runs only
    assert sizes[-1] <= max(sizes[:8]) * 1.05, sizes
    # A run past the window is stale, whether or not it is still in the table.
    assert _observe(tracker, store, _push("run_00000000", "completed", 1_700_000_000), now) == "stale"


def test_a_remembered_run_of_a_commit_that_failed_is_still_recognised(tmp_path: Path) -> None:
    wall = [1_700_000_000.0]
    daemon = Daemon(
        sources={},
        tracker=Tracker([], 60.0, dedupe_window=DEDUPE_WINDOW),
        store=Store(tmp_path / "state.db", []),
        collector=SnapshotCollector(),
        schedule=Schedule(1.0, 10.0),
        watchlist=WatchList(()),
        run_sources=("push",),
        wall=lambda: wall[0],
        mono=lambda: wall[0],
    )
    real_commit = daemon.store.write
    failing = [False]

    def commit(*args: object, **kwargs: object) -> None:
        if failing[0]:
            raise sqlite3.OperationalError("database or disk is full")
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    daemon.store.write = commit  # type: ignore[method-assign]
    ended = int(wall[0]) - 10

    def push(status: str) -> RunItems:
        return RunItems([_push("r1", status, ended)], [], "push")

    async def scenario() -> list[int]:
        daemon.health.started = True
        first = asyncio.create_task(daemon.inbox.submit(push("completed"), 5))
        await asyncio.sleep(0)
        daemon.step()
        assert (await first).outcome.accepted == 1  # type: ignore[union-attr]
        failing[0] = True
        wall[0] += 120  # past retention: the run leaves memory in a commit that fails
        daemon.step()
        assert daemon.committer.uncommitted is not None and "r1" in daemon.committer.uncommitted.runs.remembered
        second = asyncio.create_task(daemon.inbox.submit(push("completed"), 5))
        await asyncio.sleep(0)
        daemon.step()  # within the backoff: not written, yet known
        failing[0] = False
        wall[0] += 60
        daemon.step()
        outcome = (await second).outcome  # type: ignore[union-attr]
        third = asyncio.create_task(daemon.inbox.submit(push("failed"), 5))
        await asyncio.sleep(0)
        daemon.step()
        stale = (await third).outcome  # type: ignore[union-attr]
        return [outcome.accepted, outcome.duplicates, stale.stale]

    assert asyncio.run(scenario()) == [0, 1, 1]
    assert daemon.store.remembered_count() == 1
    assert daemon.tracker.aggregates.counter("assistants_runs_finished_total", ("completed", "push")) == 1


def test_finishes_of_one_moment_are_one_event_with_a_count_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", [])
    tracker = store.load().tracker((), HOUR, DEDUPE_WINDOW)
    now = NOW
    for i in range(500):
        _observe(tracker, store, _push(f"c{i}", "completed" if i % 5 else "failed", int(now) - 1), now)
    assert [(f.status, f.count) for f in tracker.finishes] == [("failed", 100), ("completed", 400)]
    _commit(tracker, store)
    _observe(tracker, store, _push("late", "failed", int(now) - 1), now)  # same moment, after the commit
    _commit(tracker, store)
    assert tracker.ratios(now)[("failure", "5m", "push")] == 101 / 501
    restarted = Store(tmp_path / "state.db", []).load().tracker((), HOUR, DEDUPE_WINDOW)
    assert restarted.ratios(now) == tracker.ratios(now)
    assert sum(f.count for f in restarted.finishes) == 501
    assert restarted.ratios(now + 301).get(("failure", "5m", "push")) is None  # left the window: no runs


def test_a_listing_of_a_scope_watched_later_does_not_count_a_remembered_run_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", [])
    tracker = store.load().tracker((), HOUR, DEDUPE_WINDOW)
    created = int(NOW) - 3 * HOUR
    pushed = RunSnapshot("r1", "thread_x", "completed", created, completed_at=created + 10, source="push")
    assert _observe(tracker, store, pushed, NOW - 3 * HOUR + 20) == "accepted"
    tracker.expire(NOW)
    _commit(tracker, store)
    assert store.remembered_count() == 1 and "r1" not in tracker.runs
    tracker.watch("thread_x", born=created - 100)  # discovery: created while watched, so its runs count
    listed = [RunSnapshot("r1", "thread_x", "completed", created, completed_at=created + 10)]
    tracker.observe_listing(
        "thread_x", listed, NOW, complete=True, ok=True, recalled=store.recall(tracker.unknown(s.id for s in listed))
    )
    assert tracker.aggregates.counter("assistants_runs_finished_total", ("completed", "push")) == 1
    assert tracker.aggregates.counter("assistants_runs_finished_total", ("completed", "threads")) == 0
    assert tracker.should_stop("thread_x", listed, store.recall(["r1"])) is False  # nothing older than covered
    # Without the recall the listing would have counted it a second time: the answer comes from the table.
    fresh = Tracker((), HOUR, dedupe_window=DEDUPE_WINDOW)
    fresh.watch("thread_x", born=created - 100)
    fresh.observe_listing("thread_x", listed, NOW, complete=True, ok=True)
    assert fresh.aggregates.counter("assistants_runs_finished_total", ("completed", "threads")) == 1
