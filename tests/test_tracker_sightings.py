"""A run's queued stint and every count do not depend on which moments of its life the polls happened to see.

One run's life is a list of snapshots. A poll sees some of them (always its end, or nothing is counted), through
a listing or a fetch by id, with or without a restart in between, and the thread may be swept only when the
first of them is seen. Whatever was seen, the counters, the run duration and the queued stint (given exactly
by the API's timestamps) equal what seeing every snapshot gives. Later stints are sampled by design: a stint
that began and ended between two polls is not seen, so only the queued one is compared.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.aggregates import Aggregates
from exporter.metrics_spec import RUN_DURATION, STATUS_DURATION
from exporter.model import RunSnapshot
from exporter.tracker import Tracker

T0 = 1_700_000_000
TH = "thread_a"
C = T0 + 10  # the run's created_at


def _snap(status: str, **kw: int) -> RunSnapshot:
    return RunSnapshot(
        id="run_1",
        scope=TH,
        status=status,
        created_at=C,
        assistant_id="asst_research",
        prompt_tokens=5,
        completion_tokens=7,
        **kw,  # type: ignore[arg-type]
    )


S = C + 4  # started_at
# (moment it is seen, snapshot): lives as the simulator and the API play them.
LIVES: dict[str, list[tuple[int, RunSnapshot]]] = {
    "completed": [
        (C, _snap("queued")),
        (S + 1, _snap("in_progress", started_at=S)),
        (S + 9, _snap("completed", started_at=S, completed_at=S + 8)),
    ],
    "tools_failed": [
        (C + 1, _snap("queued")),
        (S + 1, _snap("in_progress", started_at=S)),
        (S + 3, _snap("requires_action", started_at=S)),
        (S + 5, _snap("in_progress", started_at=S)),
        (S + 9, _snap("failed", started_at=S, failed_at=S + 8)),
    ],
    "expired_started": [
        (C, _snap("queued")),
        (S + 1, _snap("in_progress", started_at=S)),
        (S + 2, _snap("requires_action", started_at=S, expires_at=S + 30)),
        (S + 31, _snap("expired", started_at=S, expires_at=S + 30)),
    ],
    "expired_unstarted": [(C, _snap("queued", expires_at=C + 30)), (C + 31, _snap("expired", expires_at=C + 30))],
    "cancelled_queued": [
        (C, _snap("queued")),
        (C + 2, _snap("cancelling")),
        (C + 4, _snap("cancelled", cancelled_at=C + 3)),
    ],
}


def _restart(tracker: Tracker) -> Tracker:
    """A new tracker from what the state file holds: scopes, runs, finish events and the aggregates."""
    again = Tracker(tracker.extra_labels, tracker.retention, tracker.aggregates, tracker.dedupe_window)
    again.restore(
        [replace(s) for s in tracker.scopes.values()],
        [replace(r) for r in tracker.runs.values()],
        list(tracker.finishes),
    )
    return again


def _play(life: str, seen: list[int], by_id: list[bool], restarts: list[bool], swept_first: bool) -> Aggregates:
    tracker = Tracker(["assistant_id"], retention=3600, aggregates=Aggregates())
    if swept_first:
        tracker.observe_listing(TH, [], T0, complete=True, ok=True)  # watched before the run was created
    for i in seen:
        now, snap = LIVES[life][i]
        if by_id[i] and TH in tracker.scopes:
            tracker.observe_run(snap, now)
        else:
            tracker.observe_listing(TH, [snap], now, complete=True, ok=True)
        if restarts[i]:
            tracker = _restart(tracker)
    return tracker.aggregates


UNSTARTED = ("expired_unstarted", "cancelled_queued")  # no started_at: the queued stint's end is sampled


def _exact(agg: Aggregates, life: str) -> dict[tuple[str, tuple[str, ...]], tuple[float, ...]]:
    """Counters, run durations and queued stints (their length too when the API gives it): what must not
    depend on the moments seen."""
    out: dict[tuple[str, tuple[str, ...]], tuple[float, ...]] = {k: (v,) for k, v in agg.counters.items() if v}
    for key, h in agg.histograms.items():
        if key[0] == RUN_DURATION.name:
            out[key] = (h.count, h.sum)
        elif key[0] == STATUS_DURATION.name and key[1][0] == "queued":
            out[key] = (h.count,) if life in UNSTARTED else (h.count, h.sum)
    return out


@st.composite
def sightings(draw: st.DrawFn) -> tuple[str, list[int], list[bool], list[bool], bool]:
    life = draw(st.sampled_from(sorted(LIVES)))
    n = len(LIVES[life])
    earlier = draw(st.sets(st.integers(0, n - 2)))
    seen = [*sorted(earlier), n - 1]
    return (
        life,
        seen,
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(case=sightings())
def test_what_a_run_counts_does_not_depend_on_the_moments_seen(
    case: tuple[str, list[int], list[bool], list[bool], bool],
) -> None:
    life, seen, by_id, restarts, swept_first = case
    n = len(LIVES[life])
    everything = _exact(_play(life, list(range(n)), [False] * n, [False] * n, swept_first=True), life)
    got = _exact(_play(life, seen, by_id, restarts, swept_first), life)
    if not swept_first and seen == [n - 1]:
        assert got == {}  # ended before the thread's first listing: history, never counted
    else:
        assert got == everything
    queued = everything[(STATUS_DURATION.name, ("queued", "threads", "asst_research"))]
    assert queued == ((1,) if life in UNSTARTED else (1, S - C))


def test_a_run_the_sweep_finds_in_progress_has_its_queued_stint_observed() -> None:
    """Regression: the thread's first listing came after the run had started (a late first poll). The run is
    counted when it ends, but its queued stint was never observed, unlike when that listing saw it queued."""
    for seen in ([0, 1, 2], [1, 2]):
        tracker = Tracker(["assistant_id"], retention=3600)
        for i in seen:
            now, snap = LIVES["completed"][i]
            tracker.observe_listing(TH, [snap], now, complete=True, ok=True)
        h = tracker.aggregates.histograms[(STATUS_DURATION.name, ("queued", "threads", "asst_research"))]
        assert (h.count, h.sum) == (1, S - C)
