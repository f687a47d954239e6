"""The tracker with fake time: history, exact-once counting, stints, retention, paging economy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.metrics_spec import RUN_DURATION, RUNS_FINISHED, STATUS_DURATION
from exporter.model import RunSnapshot
from exporter.tracker import Tracker

T0 = 1_700_000_000
TH = "thread_a"


def snap(run_id: str, status: str, created: int = T0, **kw: object) -> RunSnapshot:
    return RunSnapshot(id=run_id, scope=TH, status=status, created_at=created, assistant_id="asst_1",
                       **kw)  # type: ignore[arg-type]


def finished(tr: Tracker, status: str) -> float:
    return tr.aggregates.counter(RUNS_FINISHED.name, (status, "threads", "asst_1"))


def stint_obs(tr: Tracker, status: str) -> tuple[int, float]:
    h = tr.aggregates.histograms.get((STATUS_DURATION.name, (status, "threads", "asst_1")))
    return (h.count, h.sum) if h else (0, 0.0)


@pytest.fixture
def tr() -> Tracker:
    tracker = Tracker(["assistant_id"], retention=3600)
    tracker.observe_listing(TH, [], T0, complete=True, ok=True)  # first sweep: empty thread
    return tracker


def test_history_is_never_counted_and_recent_history_shows_in_gauge() -> None:
    tracker = Tracker(["assistant_id"], retention=3600)
    old = snap("r_old", "completed", created=T0 - 10_000, completed_at=T0 - 9_000)
    recent = snap("r_recent", "failed", created=T0 - 100, failed_at=T0 - 50)
    running = snap("r_run", "in_progress", created=T0 - 30, started_at=T0 - 20)
    tracker.observe_listing(TH, [running, recent, old], T0, complete=True, ok=True)
    assert tracker.aggregates.counters == {}
    # History observes nothing; the running run will be counted, so its queued stint (exact from the API's
    # timestamps) is observed as it is for a run the sweep sees still queued.
    assert set(tracker.aggregates.histograms) == {(STATUS_DURATION.name, ("queued", "threads", "asst_1"))}
    assert stint_obs(tracker, "queued") == (1, 10.0)
    assert "r_old" not in tracker.runs  # past retention: not even kept
    assert tracker.scopes[TH].horizon == T0 - 10_000
    assert tracker.status_counts() == {("failed", "threads", "asst_1"): 1, ("in_progress", "threads", "asst_1"): 1}
    # Seeing history again never counts it.
    tracker.observe_listing(TH, [running, recent, old], T0 + 5, complete=True, ok=True)
    assert tracker.aggregates.counters == {}


def test_run_seen_only_when_finished_is_counted_once_with_exact_queue_time(tr: Tracker) -> None:
    done = snap("r1", "completed", created=T0 + 1, started_at=T0 + 4, completed_at=T0 + 10,
                prompt_tokens=7, completion_tokens=3)
    for t in (T0 + 12, T0 + 17, T0 + 22):
        tr.observe_listing(TH, [done], t, complete=True, ok=True)
    assert finished(tr, "completed") == 1
    assert stint_obs(tr, "queued") == (1, 3.0)
    assert stint_obs(tr, "in_progress") == (1, 6.0)
    h = tr.aggregates.histograms[(RUN_DURATION.name, ("completed", "threads", "asst_1"))]
    assert (h.count, h.sum) == (1, 9.0)
    assert tr.aggregates.counter("assistants_run_tokens_total", ("prompt", "threads", "asst_1")) == 7
    assert tr.aggregates.counter("assistants_run_tokens_total", ("completion", "threads", "asst_1")) == 3


def test_observed_lifecycle_times_each_stint(tr: Tracker) -> None:
    r = snap("r1", "queued", created=T0 + 1)
    tr.observe_listing(TH, [r], T0 + 2, complete=True, ok=True)
    tr.observe_listing(TH, [replace(r, status="in_progress", started_at=T0 + 5)], T0 + 7, complete=True, ok=True)
    assert stint_obs(tr, "queued") == (1, 4.0)
    tr.observe_listing(TH, [replace(r, status="requires_action", started_at=T0 + 5)], T0 + 12, complete=True, ok=True)
    assert stint_obs(tr, "in_progress") == (1, 7.0)  # from started_at, exact start
    tr.observe_listing(TH, [replace(r, status="in_progress", started_at=T0 + 5)], T0 + 20, complete=True, ok=True)
    assert stint_obs(tr, "requires_action") == (1, 8.0)  # observation to observation
    tr.observe_listing(TH, [replace(r, status="failed", started_at=T0 + 5, failed_at=T0 + 23,
                            error_code="server_error")], T0 + 25, complete=True, ok=True)
    assert stint_obs(tr, "in_progress") == (2, 10.0)  # second stint ends at failed_at
    assert finished(tr, "failed") == 1
    assert tr.aggregates.counter("assistants_run_errors_total", ("server_error", "threads", "asst_1")) == 1


def test_terminal_runs_never_change_or_recount(tr: Tracker) -> None:
    r = snap("r1", "expired", created=T0 + 1, expires_at=T0 + 601)
    tr.observe_listing(TH, [r], T0 + 700, complete=True, ok=True)
    tr.observe_listing(TH, [replace(r, status="completed")], T0 + 705, complete=True, ok=True)
    assert finished(tr, "expired") == 1
    assert finished(tr, "completed") == 0
    assert tr.runs["r1"].status == "expired"


def test_incomplete_reason_and_unknown_defaults(tr: Tracker) -> None:
    tr.observe_listing(TH, [snap("r1", "incomplete", created=T0 + 1, incomplete_reason="max_prompt_tokens"),
                    snap("r2", "failed", created=T0 + 2)], T0 + 9, complete=True, ok=True)
    assert tr.aggregates.counter("assistants_run_incomplete_total", ("max_prompt_tokens", "threads", "asst_1")) == 1
    assert tr.aggregates.counter("assistants_run_errors_total", ("unknown", "threads", "asst_1")) == 1


def test_retention_forgets_and_a_forgotten_run_never_counts_again(tr: Tracker) -> None:
    r = snap("r1", "completed", created=T0 + 1, completed_at=T0 + 5)
    tr.observe_listing(TH, [r], T0 + 6, complete=True, ok=True)
    tr.expire(T0 + 5 + 3599)
    assert "r1" in tr.runs
    tr.expire(T0 + 5 + 3600)
    assert tr.status_counts() == {}
    assert "r1" in tr.runs  # the newest run of its thread: a same-second sibling may still be unseen
    newer = snap("r2", "queued", created=T0 + 3700)
    tr.observe_listing(TH, [newer, r], T0 + 3700, complete=True, ok=True)
    tr.expire(T0 + 3701)
    assert "r1" not in tr.runs
    tr.observe_listing(TH, [newer, r], T0 + 4000, complete=True, ok=True)
    assert finished(tr, "completed") == 1
    assert tr.accounted(TH, r)  # below the horizon counts as accounted for


def test_stop_rule_one_page_in_steady_state(tr: Tracker) -> None:
    done = snap("r1", "completed", created=T0 + 1, completed_at=T0 + 3)
    live = snap("r2", "in_progress", created=T0 + 5, started_at=T0 + 6)
    tr.observe_listing(TH, [live, done], T0 + 8, complete=True, ok=True)
    assert tr.should_stop(TH, [live, done])
    assert not tr.should_stop(TH, [done])  # r2 still unseen
    newer = snap("r3", "queued", created=T0 + 9)
    assert not tr.should_stop(TH, [newer, live])  # nothing accounted for reached yet
    # A failed poll read only the newest page: the next one may not stop on what that page taught it.
    burst = [snap(f"b{i}", "completed", created=T0 + 20 + i) for i in range(3)]
    tr.observe_listing(TH, burst[1:], T0 + 30, complete=False, ok=False)
    assert not tr.should_stop(TH, [burst[2], burst[1], live])
    assert tr.should_stop(TH, [*reversed(burst), live, done])
    fresh = Tracker(["assistant_id"], retention=3600)
    assert not fresh.should_stop(TH, [done])  # first sweep reads everything


def test_vanished_and_gone_runs_leave_the_gauge_without_counting(tr: Tracker) -> None:
    tr.observe_listing(TH, [snap("r1", "in_progress", created=T0 + 1, started_at=T0 + 2)], T0 + 3,
                       complete=True, ok=True)
    tr.observe_listing(TH, [], T0 + 8, complete=True, ok=True)
    assert "r1" not in tr.runs
    tr.observe_listing(TH, [snap("r2", "queued", created=T0 + 9)], T0 + 10, complete=True, ok=True)
    tr.mark_gone(TH)
    assert tr.status_counts() == {}
    assert tr.scope_states() == {"active": 0, "idle": 0, "gone": 1, "failing": 0}
    assert sum(v for (n, _), v in tr.aggregates.counters.items() if n == RUNS_FINISHED.name) == 0


def test_partial_listing_does_not_drop_unseen_runs(tr: Tracker) -> None:
    tr.observe_listing(TH, [snap("r1", "in_progress", created=T0 + 1, started_at=T0 + 2)], T0 + 3,
                       complete=True, ok=True)
    tr.observe_listing(TH, [], T0 + 8, complete=False, ok=False)
    assert "r1" in tr.runs


def test_ratios_by_window(tr: Tracker) -> None:
    runs = [snap(f"r{i}", "failed" if i < 2 else "expired" if i == 2 else "completed", created=T0 + 1)
            for i in range(8)]
    tr.observe_listing(TH, runs[:4], T0 + 10, complete=True, ok=True)
    tr.observe_listing(TH, runs, T0 + 1000, complete=True, ok=True)
    now = T0 + 1100
    ratios = tr.ratios(now)
    assert ratios[("failure", "1h", "threads", "asst_1")] == pytest.approx(2 / 8)
    assert ratios[("expiry", "1h", "threads", "asst_1")] == pytest.approx(1 / 8)
    assert ratios[("failure", "5m", "threads", "asst_1")] == 0.0  # only the last four finished within 5m
    tr.expire(T0 + 10 + 3601)
    assert sum(f.count for f in tr.finishes) == 4  # the runs of one moment are one event with a count


def test_oldest_age_per_status(tr: Tracker) -> None:
    tr.observe_listing(TH, [snap("r1", "queued", created=T0 + 1), snap("r2", "queued", created=T0 + 5)],
               T0 + 6, complete=True, ok=True)
    assert tr.oldest_ages(T0 + 11) == {("queued", "threads", "asst_1"): 10.0}


def test_labels_follow_configuration() -> None:
    tracker = Tracker(["assistant_id", "model"], retention=60)
    tracker.observe_listing(TH, [], T0, complete=True, ok=True)
    tracker.observe_listing(TH, [replace(snap("r1", "completed", created=T0 + 1), model="gpt-x")], T0 + 2,
                    complete=True, ok=True)
    assert tracker.aggregates.counter(RUNS_FINISHED.name, ("completed", "threads", "asst_1", "gpt-x")) == 1
    assert tracker.label_sets() == {("threads", "asst_1", "gpt-x")}
    bare = Tracker([], retention=60)
    assert bare.labels_of(snap("r", "queued")) == ("threads",)


def test_unswept_thread_treats_terminal_runs_as_history_until_a_poll_succeeds() -> None:
    tracker = Tracker(["assistant_id"], retention=3600)
    done = snap("r1", "completed", created=T0 + 1, completed_at=T0 + 2)
    tracker.observe_listing(TH, [done], T0 + 3, complete=False, ok=False)
    assert not tracker.scopes[TH].swept
    tracker.observe_listing(TH, [done], T0 + 4, complete=True, ok=True)
    assert tracker.aggregates.counters == {}
    assert tracker.scopes[TH].swept


def test_forgetting_a_run_never_hides_an_unseen_older_one() -> None:
    """Regression: a failed poll read only the newest page; forgetting what it saw raised the horizon over
    a run still unread on the next page, which was then taken for history and never counted."""
    tracker = Tracker(["assistant_id"], retention=5)
    tracker.observe_listing(TH, [], T0, complete=True, ok=True)
    newest = snap("r_new", "cancelled", created=T0 + 1, cancelled_at=T0 + 1)
    unread = snap("r_unread", "cancelled", created=T0 + 1, cancelled_at=T0 + 1)
    tracker.observe_listing(TH, [newest], T0 + 6, complete=False, ok=False)  # page 2 failed
    tracker.expire(T0 + 6)
    assert "r_new" in tracker.runs  # past retention, but kept until a successful poll covers it
    assert not tracker.should_stop(TH, [newest])
    tracker.observe_listing(TH, [newest, unread], T0 + 7, complete=True, ok=True)
    assert finished(tracker, "cancelled") == 2


def test_error_codes_are_bounded_past_which_new_codes_count_as_other() -> None:
    from exporter import metrics_spec as spec

    tr = Tracker([], 3600, dedupe_window=3600)
    codes = [f"code_{i}" for i in range(spec.MAX_ERROR_CODES)]
    for i, code in enumerate(codes):
        tr.observe_run(RunSnapshot(f"r{i}", "", "failed", 100, failed_at=110, error_code=code, source="responses"),
                       120.0)
    counted = {values[0]: v for (name, values), v in tr.aggregates.counters.items() if name == spec.ERRORS.name}
    known = len(spec.KNOWN_ERROR_CODES)
    assert sum(counted.values()) == spec.MAX_ERROR_CODES
    assert len([c for c in counted if c.startswith("code_")]) == spec.MAX_ERROR_CODES - known
    assert counted[spec.OTHER_ERROR_CODE] == known
    tr.observe_run(RunSnapshot("k", "", "failed", 100, failed_at=110, error_code="server_error"), 120.0)
    assert tr.aggregates.counters[(spec.ERRORS.name, ("server_error", "threads"))] == 1  # known codes always pass


def test_a_run_swept_with_an_unreadable_status_that_had_already_ended_is_history() -> None:
    """Regression: a run whose status could not be read at the sweep was counted when a later poll showed it
    finished, although it had ended before the exporter first saw it."""
    tracker = Tracker(["assistant_id"], retention=3600)
    ended_before = snap("r_old", "unknown", created=T0 - 100)
    running = snap("r_live", "unknown", created=T0 - 50)
    tracker.observe_listing(TH, [ended_before, running], T0, complete=True, ok=True)
    tracker.observe_listing(TH, [replace(ended_before, status="completed", completed_at=T0 - 90),
                                 replace(running, status="completed", completed_at=T0 + 5)], T0 + 10,
                            complete=True, ok=True)
    assert finished(tracker, "completed") == 1  # only the one that ended after the sweep
    assert tracker.runs["r_old"].history and tracker.runs["r_old"].status == "completed"
    assert tracker.status_counts() == tracker.recount()
