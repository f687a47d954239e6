"""Property: whatever the status sequences, poll timing and crashes, each finished run counts exactly once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import statuses
from exporter.metrics_spec import RUNS_FINISHED
from exporter.model import RunSnapshot
from exporter.store import Store
from exporter.tracker import DEDUPE_WINDOW, Tracker

T0 = 1_700_000_000
TH = "thread_p"
NON_TERMINAL_API = ("queued", "in_progress", "requires_action", "cancelling")


@dataclass(frozen=True)
class Script:
    run_id: str
    created: int
    steps: tuple[tuple[str, int], ...]  # (status, entered at), in time order

    def status_at(self, t: int) -> str | None:
        current = None
        for status, at in self.steps:
            if at <= t:
                current = status
        return current

    def terminal_at(self) -> int | None:
        status, at = self.steps[-1]
        return at if status in statuses.TERMINAL else None

    def snapshot(self, t: int) -> RunSnapshot | None:
        status = self.status_at(t)
        if status is None:
            return None
        started = next((at for s, at in self.steps if s == "in_progress" and at <= t), None)
        end = self.terminal_at() if status in statuses.TERMINAL else None
        return RunSnapshot(
            id=self.run_id, scope=TH, status=status, created_at=self.created, assistant_id=self.run_id,
            started_at=started, completed_at=end if status in ("completed", "incomplete") else None,
            failed_at=end if status == "failed" else None, cancelled_at=end if status == "cancelled" else None,
            expires_at=end if status == "expired" else None,
        )


@st.composite
def scripts(draw: st.DrawFn, run_id: str) -> Script:
    created = draw(st.integers(0, 60))
    t = created
    steps = [("queued", t)]
    for _ in range(draw(st.integers(0, 4))):
        t += draw(st.integers(0, 8))
        steps.append((draw(st.sampled_from(NON_TERMINAL_API)), t))
    if draw(st.booleans()):
        t += draw(st.integers(0, 8))
        steps.append((draw(st.sampled_from(statuses.TERMINAL_STATUSES)), t))
    return Script(run_id, T0 + created, tuple((s, T0 + at) for s, at in steps))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Script], list[int], list[str], float]:
    n = draw(st.integers(1, 12))
    runs = [draw(scripts(f"run_{i}")) for i in range(n)]
    polls = sorted(set(draw(st.lists(st.integers(0, 110), min_size=1, max_size=25))))
    events = [draw(st.sampled_from(["commit", "commit", "commit", "crash", "fail"])) for _ in polls]
    retention = draw(st.sampled_from([5.0, 30.0, 3600.0]))
    return runs, [T0 + p for p in polls], events, retention


PAGE = 3


def _oldest_brute_force(tracker: Tracker, now: float) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for run in tracker.runs.values():
        if not run.terminal:
            key = (run.status, *tracker.labels_of(run))
            out[key] = max(out.get(key, float("-inf")), now - run.stint_start)
    return out


def _counted(tracker: Tracker) -> dict[str, float]:
    """run id (it is the assistant_id here) -> how many times it was counted, whatever the source."""
    out: dict[str, float] = {}
    for (name, labels), value in tracker.aggregates.counters.items():
        if name == RUNS_FINISHED.name:
            out[labels[2]] = out.get(labels[2], 0.0) + value
    return out


def _new_tracker(store: Store, retention: float, dedupe_window: float = 0.0) -> Tracker:
    return store.load().tracker(["assistant_id"], retention, dedupe_window)


def _commit(tracker: Tracker, store: Store) -> None:
    store.commit(tracker.take_changes())


def _poll(tracker: Tracker, listing: list[RunSnapshot], fail_after_pages: int | None) -> tuple[list[RunSnapshot], bool]:
    """Page through a newest-first listing as the source does: (runs read, complete)."""
    seen: list[RunSnapshot] = []
    for page_no, start in enumerate(range(0, max(len(listing), 1), PAGE)):
        if fail_after_pages is not None and page_no >= fail_after_pages:
            return seen, False
        seen.extend(listing[start:start + PAGE])
        if start + PAGE >= len(listing):
            return seen, True
        if tracker.should_stop(TH, seen):
            return seen, False
    return seen, True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds(), fail_pages=st.integers(0, 2))
def test_each_finished_run_is_counted_exactly_once(tmp_path: Path, world: tuple, fail_pages: int) -> None:  # type: ignore[type-arg]
    runs, polls, events, retention = world
    path = tmp_path / f"state-{abs(hash(repr(world)))}-{fail_pages}.db"
    path.unlink(missing_ok=True)
    store = Store(path, ["assistant_id"])
    tracker = _new_tracker(store, retention)
    first_commit: int | None = None
    swept_at: int | None = None
    last_ok: int | None = None
    last_commit: int | None = None
    for t, event in zip(polls, events, strict=True):
        listing = [s for s in (r.snapshot(t) for r in runs) if s is not None]
        listing.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        ok = event != "fail"
        seen, complete = _poll(tracker, listing, None if ok else fail_pages)
        tracker.observe_listing(TH, seen, t, complete=complete, ok=ok)
        tracker.expire(t)
        assert tracker.status_counts() == tracker.recount()  # the incremental indexes stay exact
        assert tracker.oldest_ages(t) == _oldest_brute_force(tracker, t)
        if event == "crash":  # kill -9 before the commit: this poll's effects are lost
            tracker = _new_tracker(store, retention)
            continue
        _commit(tracker, store)
        first_commit = t if first_commit is None else first_commit
        last_commit = t
        if ok:
            swept_at = t if swept_at is None else swept_at
            last_ok = t
    store.close()

    counted = _counted(tracker)
    assert all(v == 1 for v in counted.values()), counted  # never twice
    ends = {r.run_id: r.terminal_at() for r in runs}
    must = {i for i, e in ends.items() if e is not None and swept_at is not None and last_ok is not None
            and swept_at < e <= last_ok}
    may = {i for i, e in ends.items() if e is not None and first_commit is not None and last_commit is not None
           and first_commit < e <= last_commit}
    assert must <= set(counted) <= may  # never lost, never history


@st.composite
def mixed_worlds(draw: st.DrawFn) -> tuple[list[Script], list[int], list[str], list[list[tuple[int, int]]], float]:
    """Runs, observation times, what happens at each (a listing, pushes, a crash) and which runs are pushed
    at which (script index, lag: a push may carry a snapshot from up to 20 s earlier)."""
    n = draw(st.integers(1, 10))
    runs = [draw(scripts(f"run_{i}")) for i in range(n)]
    times = sorted(set(draw(st.lists(st.integers(0, 110), min_size=1, max_size=25))))
    events = [draw(st.sampled_from(["list", "push", "push", "list+push", "crash", "fail"])) for _ in times]
    pushes = [draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([0, 0, 0, 5, 20])), max_size=6))
              for _ in times]
    retention = draw(st.sampled_from([5.0, 30.0, 3600.0]))
    return runs, [T0 + t for t in times], events, pushes, retention


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=mixed_worlds(), scoped=st.booleans())
def test_listings_and_single_run_updates_count_each_run_once(tmp_path: Path, world: tuple, scoped: bool) -> None:  # type: ignore[type-arg]
    """Pushes (duplicated, late, out of order) mixed with listings of the same thread, commits and crashes:
    a run is counted at most once, and a terminal push that was committed is never lost."""
    runs, times, events, pushes, retention = world
    path = tmp_path / f"mixed-{abs(hash(repr(world)))}-{scoped}.db"
    path.unlink(missing_ok=True)
    store = Store(path, ["assistant_id"])
    tracker = _new_tracker(store, retention, DEDUPE_WINDOW)
    committed_terminal_push: set[str] = set()
    uncommitted: set[str] = set()
    maybe_history: set[str] = set()  # read finished by a listing: it may have been history
    for t, event, pushed in zip(times, events, pushes, strict=True):
        if event == "crash":
            tracker = _new_tracker(store, retention, DEDUPE_WINDOW)
            uncommitted.clear()
            continue
        if "list" in event or event == "fail":
            listing = [s for s in (r.snapshot(t) for r in runs) if s is not None]
            listing.sort(key=lambda s: (s.created_at, s.id), reverse=True)
            ok = event != "fail"
            seen, complete = _poll(tracker, listing, None if ok else 1)
            tracker.observe_listing(TH, seen, t, complete=complete, ok=ok,
                                    recalled=store.recall(tracker.unknown(s.id for s in seen)))
            maybe_history |= {s.id for s in seen if s.terminal}
        if "push" in event:
            for index, lag in pushed:
                snap = runs[index].snapshot(t - lag)
                if snap is None:
                    continue
                snap = replace(snap, source="push", scope=TH if scoped else "")
                tracker.observe_run(snap, t, store.recall(tracker.unknown([snap.id])))
                if snap.terminal:
                    uncommitted.add(snap.id)
        tracker.expire(t)
        assert tracker.status_counts() == tracker.recount()
        _commit(tracker, store)
        committed_terminal_push |= uncommitted
        uncommitted.clear()
    store.close()
    counted = _counted(tracker)
    assert all(v == 1 for v in counted.values()), counted  # never twice, across sources and restarts
    # A committed terminal push is never lost, unless a listing had already seen that run finished.
    assert committed_terminal_push - maybe_history <= set(counted)
