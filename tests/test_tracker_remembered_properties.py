"""Runs move between the three kinds (unfinished, retained, remembered) as retention and the dedupe window
pass, with restarts in between: every counter, gauge and answer equals a model that keeps everything."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter import statuses
from exporter.model import RunSnapshot
from exporter.store import Store

T0 = 1_700_000_000
RETENTION = 100.0
WINDOW = 1000.0
ENDS = ("completed", "failed", "cancelled")  # the statuses whose end the report carries


@dataclass
class Reference:
    """Everything in memory, forever: status and end of every run ever accepted."""

    runs: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    finished: Counter[str] = field(default_factory=Counter)

    def report(self, snap: RunSnapshot, now: float) -> str:
        known = self.runs.get(snap.id)
        if known is not None and known[1] is not None:  # ended
            return "stale" if snap.status != known[0] or now - known[1] >= WINDOW else "duplicate"
        if snap.terminal:
            ended = float(snap.ended_at() or 0)
            if known is None and now - ended >= WINDOW:
                return "stale"
            self.runs[snap.id] = (snap.status, ended)
            self.finished[snap.status] += 1
            return "accepted"
        if known is not None and known[0] == snap.status:
            return "duplicate"
        self.runs[snap.id] = (snap.status, None)
        return "accepted"

    def gauges(self, now: float) -> dict[tuple[str, ...], int]:
        out: Counter[tuple[str, ...]] = Counter()
        for status, ended in self.runs.values():
            if ended is None or ended + RETENTION > now:
                out[(status, "push")] += 1
        return dict(out)


# One step: ("push", [(run, terminal?, resend of the end?)]), ("wait", seconds) or ("restart",).
reports = st.lists(st.tuples(st.integers(0, 14), st.booleans(), st.sampled_from(ENDS)), min_size=1, max_size=8)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("push"), reports),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, 90.0, 150.0, 400.0, 900.0, 1500.0])),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_counters_gauges_and_answers_equal_a_model_that_forgets_nothing(tmp_path: Path, steps: list) -> None:  # type: ignore[type-arg]
    path = tmp_path / f"r-{abs(hash(repr(steps)))}.db"
    path.unlink(missing_ok=True)
    store = Store(path, [])
    tracker = store.load().tracker((), RETENTION, WINDOW)
    ref = Reference()
    now = float(T0)
    started: dict[str, float] = {}  # run -> when it started (its first report)
    ended: dict[str, tuple[str, int]] = {}  # run -> the end it reports, fixed once it first ends
    for kind, arg in steps:
        if kind == "wait":
            now += arg
        elif kind == "restart":
            store.commit(tracker.take_changes())
            store.close()
            store = Store(path, [])
            tracker = store.load().tracker((), RETENTION, WINDOW)
        else:
            for number, terminal, status in arg:
                run_id = f"run_{number}"
                created = int(started.setdefault(run_id, now)) - 5
                if terminal or run_id in ended:
                    status, end = ended.setdefault(run_id, (status, int(now)))
                    snap = RunSnapshot(run_id, "", status, created, source="push", **{f"{status}_at": end})  # type: ignore[arg-type]
                else:
                    snap = RunSnapshot(run_id, "", statuses.IN_PROGRESS, created, source="push")
                answer = tracker.observe_run(snap, now, store.recall(tracker.unknown([snap.id])))
                assert answer == ref.report(snap, now), (run_id, snap.status)
        tracker.expire(now)
        store.commit(tracker.take_changes())
        assert tracker.status_counts() == ref.gauges(now)
        if store.remembered_count():
            event("a run was remembered (left memory for the table)")
        for status in ENDS:
            assert (
                tracker.aggregates.counter("assistants_runs_finished_total", (status, "push")) == ref.finished[status]
            )
    store.close()
