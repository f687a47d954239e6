"""The real daemon with `--source sessions`, as a subprocess, against the simulator's Agents API: with no
session configured it discovers them all, and its numbers equal the simulator's truth, exactly, across
sessions created while it runs and a `kill -9` midway. Also the economy of a steady state, printed."""

from __future__ import annotations

import pytest

from exporter.model import TURN_STATUSES
from exporter.simulator import Simulator
from tests.conftest import ExporterStarter, SimFactory
from tests.exporter_process import ExporterProcess, Samples, by_label, total
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

SPEED = 20  # scenario durations / 20: a turn lasts about a second
FINISHED = "assistants_runs_finished_total"
DISCOVER_INTERVAL = 1.0
POLL, IDLE_POLL = 0.2, 0.5
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(seed=11, speed=SPEED, sessions_scenario="sessions")  # only the Agents API is busy


def _quiesce(sim: Simulator, timeout: float = 30) -> None:
    def idle() -> bool:
        return all(s in TERMINAL for s in sim.sessions.truth().by_status)
    wait_until(idle, timeout, interval=0.1, what="simulator turns to finish")


def _finished(sim: Simulator, since: int) -> int:
    return sum(sim.sessions.truth(since).finished.values())


EXPORTER_FLAGS = ("--source", "sessions", "--discover-interval", str(DISCOVER_INTERVAL), "--poll-interval", str(POLL),
                  "--idle-poll-interval", str(IDLE_POLL), "--max-requests-per-second", "1000",
                  "--max-concurrency", "16")
EXPORTER_ENV = {"OPENAI_API_KEY": "sk-test-sessions"}


def _start_workload(sim: Simulator) -> int:
    """Start arrivals at the next whole second, so nothing before it can end at or after it. Returns it."""
    since = int(sim.sessions.now()) + 1
    wait_until(lambda: sim.sessions.now() >= since, 5, 0.02, "the next second")
    sim.sessions.set_workload(True)
    return since


def _assert_totals_match(exporter: ExporterProcess, sim: Simulator, since: int) -> Samples:
    truth = sim.sessions.truth(since)
    want = {s: float(truth.finished.get(s, 0)) for s in TERMINAL}
    seen: list[dict[str, float]] = []
    wait_until(lambda: seen.append({k: v for k, v in by_label(exporter.scrape(), FINISHED, "status").items()
                                    if k in TERMINAL}) or seen[-1] == want, 30, 0.2,
               lambda: f"finished totals to equal {want}, last seen {seen[-1] if seen else None}")
    samples = exporter.scrape()
    assert total(samples, FINISHED, source="sessions") == sum(want.values())
    errors = {k: v for k, v in by_label(samples, "assistants_run_errors_total", "code").items() if v}
    assert errors == {k: float(v) for k, v in truth.error_codes.items()}
    assert by_label(samples, "assistants_run_tokens_total", "type") == {k: float(v) for k, v in truth.tokens.items()}
    # Exact: started_at and completed_at are the API's own timestamps.
    queued = "assistants_run_status_duration_seconds"
    assert total(samples, f"{queued}_count", status="queued") == len(truth.queued_seconds)
    assert total(samples, f"{queued}_sum", status="queued") == sum(truth.queued_seconds)
    for status in TERMINAL:
        durations = truth.durations.get(status, [])
        assert total(samples, "assistants_run_duration_seconds_count", status=status) == len(durations)
        assert total(samples, "assistants_run_duration_seconds_sum", status=status) == sum(durations)
    # The gauge holds every listed turn (retention is an hour), `waiting` as requires_action.
    runs = {k: v for k, v in by_label(samples, "assistants_runs", "status").items() if v}
    listed: dict[str, float] = {}
    for status, n in sim.sessions.truth().by_status.items():
        listed[TURN_STATUSES[status]] = listed.get(TURN_STATUSES[status], 0.0) + n
    assert runs == listed
    return samples


def test_discovered_sessions_equal_the_truth_across_new_sessions_and_a_kill_9(sim: Simulator,
                                                                             start_exporter: ExporterStarter) -> None:
    # History: sessions and turns that finished before the exporter started are never counted.
    sim.sessions.set_workload(True)
    wait_until(lambda: _finished(sim, 0) >= 15, 30, 0.1, "some history")
    sim.sessions.set_workload(False)
    _quiesce(sim)
    history_sessions = len(sim.sessions.session_ids())
    exporter = start_exporter(sim, *EXPORTER_FLAGS, env=EXPORTER_ENV)
    try:
        exporter.wait_ready()
        want = sum(sim.sessions.truth().by_status.values())
        wait_until(lambda: total(exporter.scrape(), "assistants_runs") == want, 30, 0.2, "the initial sweep")
        assert total(exporter.scrape(), FINISHED) == 0

        since = _start_workload(sim)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 25, 60, 0.2, "some counted finishes")
        exporter.kill9()
        # Turns keep ending, and sessions keep opening, while the exporter is down.
        down_until = _finished(sim, since) + 20
        wait_until(lambda: _finished(sim, since) >= down_until, 60, 0.1, "downtime")
        exporter = start_exporter(sim, *EXPORTER_FLAGS, env=EXPORTER_ENV)
        exporter.wait_ready()
        wait_until(lambda: _finished(sim, since) >= down_until + 40, 60, 0.1, "more workload")
        sim.sessions.set_workload(False)
        _quiesce(sim)
        samples = _assert_totals_match(exporter, sim, since)

        sessions = len(sim.sessions.session_ids())
        assert sessions > history_sessions + 5  # sessions were created while it ran (and while it was down)
        assert total(samples, "assistants_exporter_threads") == sessions
        assert total(samples, "assistants_exporter_api_up", source="sessions") == 1
        endpoints = by_label(samples, "assistants_exporter_api_requests_total", "endpoint")
        assert set(endpoints) == {"list_sessions", "list_turns", "session_events"}  # streams are on by default
    finally:
        exporter.stop()


def test_steady_state_requests_are_within_a_quarter_of_the_ideal(sim: Simulator,
                                                                 start_exporter: ExporterStarter) -> None:
    sim.sessions.set_workload(True)
    wait_until(lambda: len(sim.sessions.session_ids()) >= 12, 30, 0.1, "a dozen sessions")
    sim.sessions.set_workload(False)
    _quiesce(sim)
    sessions = len(sim.sessions.session_ids())
    exporter = start_exporter(sim, *EXPORTER_FLAGS, env=EXPORTER_ENV)
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads", state="idle") == sessions, 30,
                   0.2, "every session discovered and idle")

        def counts() -> tuple[float, float, float]:
            s = exporter.scrape()
            return (total(s, "assistants_exporter_api_requests_total", endpoint="list_turns"),
                    total(s, "assistants_exporter_api_requests_total", endpoint="list_sessions"),
                    total(s, "assistants_exporter_poll_duration_seconds_count"))

        # Past the first idle interval's random phase, then a window of 10 idle intervals.
        first = counts()
        wait_until(lambda: counts()[2] >= first[2] + 2 * sessions, 30, 0.1, "two polls a session")
        turns0, sessions0, polls0 = counts()
        window = 10 * IDLE_POLL
        start = sim.sessions.now()
        wait_until(lambda: sim.sessions.now() >= start + window, window + 5, 0.05, "the window")
        turns1, sessions1, polls1 = counts()
        elapsed = sim.sessions.now() - start
        ideal = elapsed * (sessions / IDLE_POLL + 1 / DISCOVER_INTERVAL)
        made = (turns1 - turns0) + (sessions1 - sessions0)
        print(f"\nsteady state, {sessions} idle sessions over {elapsed:.2f}s: {made:.0f} requests "
              f"(ideal {ideal:.1f}, goal <= {1.25 * ideal:.1f}; ratio {made / ideal:.3f}); "
              f"{turns1 - turns0:.0f} turn listings for {polls1 - polls0:.0f} polls, "
              f"{sessions1 - sessions0:.0f} session listings")
        assert made <= 1.25 * ideal
        assert made >= 0.6 * ideal  # it did poll: a silent exporter would pass the ceiling
        assert abs((turns1 - turns0) - (polls1 - polls0)) <= sessions  # one request a poll (polls in flight aside)
    finally:
        exporter.stop()


def test_faults_and_deleted_sessions(start_exporter: ExporterStarter) -> None:
    sim = Simulator(seed=12, speed=SPEED, sessions_scenario="sessions-churn").start()
    try:
        sim.engine.set_workload(False)
        sim.faults.error_rate = 0.05
        sim.faults.malformed_rate = 0.1
        sim.faults.truncate_rate = 0.03
        sim.faults.rate_limit_rps = 15.0
        sim.faults.rate_limit_burst = 3
        exporter = start_exporter(sim, *EXPORTER_FLAGS, env=EXPORTER_ENV)
        try:
            exporter.wait_ready()
            wait_until(lambda: len(sim.sessions.deleted) >= 5, 60, 0.1, "sessions to be deleted")
            wait_until(lambda: total(exporter.scrape(), "assistants_exporter_api_requests_total") >= 300, 60, 0.2,
                       "300 requests")

            def gone() -> float:
                return total(exporter.scrape(), "assistants_exporter_threads", state="gone")
            wait_until(lambda: gone() >= 1, 30, 0.2, "a deleted session reported gone")
            sim.sessions.set_workload(False)
            _quiesce(sim)
            samples = exporter.scrape()
            assert gone() <= len(sim.sessions.deleted)
            # Never more than happened: a turn counted once whatever the retries, truncations and 429s.
            truth = sim.sessions.truth()
            counted = by_label(samples, FINISHED, "status")
            assert all(counted.get(s, 0) <= truth.finished.get(s, 0) for s in TERMINAL)
            assert sum(counted.get(s, 0) for s in TERMINAL) > 0
            codes = by_label(samples, "assistants_exporter_api_requests_total", "code")
            assert codes.get("429", 0) > 0 and codes.get("200", 0) > 0 and codes.get("404", 0) > 0
            assert codes.get("500", 0) + codes.get("503", 0) > 0
            invalid = by_label(samples, "assistants_exporter_invalid_objects_total", "reason")
            assert invalid["malformed_page"] > 0
            assert invalid["unknown_status"] + invalid["missing_status"] + invalid["wrong_type"] > 0
            assert exporter.proc is not None and exporter.proc.poll() is None
        finally:
            exporter.stop()
    finally:
        sim.stop()
