"""The real daemon, as a subprocess, against the simulator: its numbers must equal the simulator's truth."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from exporter import statuses
from exporter.simulator import Simulator
from tests.conftest import ExporterStarter
from tests.exporter_process import ExporterProcess, Samples, by_label, total
from tests.helpers import require_binary, wait_until
from tests.simulator_support import quiesce

pytestmark = pytest.mark.slow

SPEED = 40  # scenario durations / 40: the API's 10-minute expiry takes 15 s (conftest's sim runs at 40 too)
FINISHED = "assistants_runs_finished_total"

EXPORTER_FLAGS = ("--poll-interval", "0.2", "--idle-poll-interval", "0.5", "--max-requests-per-second", "500",
                  "--log-level", "info")


def _swept(exporter: ExporterProcess, sim: Simulator) -> None:
    """Every listed run is known to the exporter: history is taken, and nothing more will end."""
    want = sum(sim.engine.truth().by_status.values())
    wait_until(lambda: total(exporter.scrape(), "assistants_runs") == want, 30, 0.2, "initial sweep")


def _finished(sim: Simulator, since: int) -> int:
    return sum(sim.engine.truth(since).finished.values())


def _start_workload(sim: Simulator) -> int:
    """Start arrivals at the next whole second, so nothing before it can end at or after it. Returns it."""
    since = sim.engine.truth().now + 1
    wait_until(lambda: sim.engine.now() >= since, 5, 0.05, "the next second")
    sim.engine.set_workload(True)
    return since


def _run_workload(sim: Simulator, finishes: int) -> int:
    """Run arrivals until `finishes` runs ended. Returns the second they started."""
    since = _start_workload(sim)
    wait_until(lambda: _finished(sim, since) >= finishes, 90, 0.2, "workload")
    sim.engine.set_workload(False)
    return since


def _assert_totals_match(exporter: ExporterProcess, sim: Simulator, since: int) -> Samples:
    truth = sim.engine.truth(since)
    want = {s: float(truth.finished.get(s, 0)) for s in statuses.TERMINAL_STATUSES}
    seen: list[dict[str, float]] = []
    wait_until(lambda: seen.append(by_label(exporter.scrape(), FINISHED, "status")) or seen[-1] == want, 30, 0.2,
               lambda: f"finished totals to equal {want}, last seen {seen[-1] if seen else None}")
    samples = exporter.scrape()
    errors = {k: v for k, v in by_label(samples, "assistants_run_errors_total", "code").items() if v}
    assert errors == {k: float(v) for k, v in truth.error_codes.items()}
    reasons = {k: v for k, v in by_label(samples, "assistants_run_incomplete_total", "reason").items() if v}
    assert reasons == {k: float(v) for k, v in truth.incomplete_reasons.items()}
    assert by_label(samples, "assistants_run_tokens_total", "type") == {k: float(v) for k, v in truth.tokens.items()}
    return samples


def test_numbers_equal_the_simulators_truth(sim: Simulator, start_exporter: ExporterStarter) -> None:
    quiesce(sim)
    exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=sim.thread_ids())
    try:
        exporter.wait_ready()
        _swept(exporter, sim)
        history = exporter.scrape()
        assert total(history, FINISHED) == 0  # history never counts
        since = _run_workload(sim, finishes=80)
        quiesce(sim)
        samples = _assert_totals_match(exporter, sim, since)

        truth = sim.engine.truth(since)
        # Plateau: every run finished, and the gauge holds each one (retention is an hour).
        runs = {k: v for k, v in by_label(samples, "assistants_runs", "status").items() if v}
        assert runs == {k: float(v) for k, v in sim.engine.truth().by_status.items()}
        assert total(samples, "assistants_run_oldest_age_seconds") == 0
        # Queued time of a run that started comes from the API's own timestamps; a run cancelled while queued
        # is timed from its whole-second created_at to when a poll saw it leave the queue (within ~1.5 s), if
        # a poll saw it queued at all.
        queued_sum = total(samples, "assistants_run_status_duration_seconds_sum", status="queued")
        queued_count = total(samples, "assistants_run_status_duration_seconds_count", status="queued")
        assert queued_count >= len(truth.queued_seconds) > 0
        started, unstarted = sum(truth.queued_seconds), truth.queued_unstarted
        assert 0.9 * started <= queued_sum <= 1.1 * (started + sum(unstarted) + 1.5 * len(unstarted))
        assert total(samples, "assistants_run_duration_seconds_count") == sum(truth.finished.values())
        assert total(samples, "assistants_exporter_api_up") == 1
        assert total(samples, "assistants_exporter_threads", state="idle") == len(sim.thread_ids())
    finally:
        exporter.stop()


def test_kill_9_midway_keeps_totals_exact(sim: Simulator, start_exporter: ExporterStarter) -> None:
    quiesce(sim)
    exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=sim.thread_ids())
    try:
        exporter.wait_ready()
        _swept(exporter, sim)
        since = _start_workload(sim)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 20, 60, 0.2, "some counted finishes")
        exporter.kill9()
        # Runs keep ending while the exporter is down; they must be counted once after the restart.
        down_until = _finished(sim, since) + 15
        wait_until(lambda: _finished(sim, since) >= down_until, 60, 0.2, "downtime")
        exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=sim.thread_ids())
        exporter.wait_ready()
        wait_until(lambda: _finished(sim, since) >= down_until + 40, 60, 0.2, "workload")
        sim.engine.set_workload(False)
        quiesce(sim)
        _assert_totals_match(exporter, sim, since)
    finally:
        exporter.stop()


def test_faults_threads_file_changes_and_deleted_threads(sim: Simulator, tmp_path: Path,
                                                         start_exporter: ExporterStarter) -> None:
    quiesce(sim)
    sim.faults.error_rate = 0.05
    sim.faults.malformed_rate = 0.2
    sim.faults.truncate_rate = 0.03
    sim.faults.rate_limit_rps = 25.0
    sim.faults.rate_limit_burst = 5
    threads = sim.thread_ids()
    exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=threads)
    try:
        exporter.wait_ready()
        _swept(exporter, sim)
        since = _run_workload(sim, finishes=40)

        # A thread added to the threads file is picked up while running.
        new_thread = sim.engine.create_thread()
        run_id = sim.engine.create_run(new_thread, [("queued", 1), ("in_progress", 600), ("completed", 0)],
                                       assistant_id="asst_added")
        with (tmp_path / "threads.txt").open("a") as f:
            f.write(f"{new_thread}  # added while running\n")
        wait_until(lambda: total(exporter.scrape(), "assistants_runs", assistant_id="asst_added") == 1, 30, 0.2,
                   "the added thread's run")
        sim.engine.cancel_run(new_thread, run_id)
        quiesce(sim)
        samples = _assert_totals_match(exporter, sim, since)
        assert total(samples, FINISHED, assistant_id="asst_added", status="cancelled") == 1

        codes = by_label(samples, "assistants_exporter_api_requests_total", "code")
        assert codes.get("429", 0) > 0 and codes.get("200", 0) > 0
        assert codes.get("500", 0) + codes.get("503", 0) > 0
        invalid = by_label(samples, "assistants_exporter_invalid_objects_total", "reason")
        assert invalid["malformed_page"] > 0
        assert invalid["unknown_status"] + invalid["missing_status"] + invalid["wrong_type"] > 0

        sim.engine.delete_thread(threads[0])
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads", state="gone") == 1, 30, 0.2,
                   "the deleted thread to be reported gone")
        assert exporter.proc is not None and exporter.proc.poll() is None
    finally:
        exporter.stop()


def test_promtool_accepts_a_real_scrape(sim: Simulator, start_exporter: ExporterStarter) -> None:
    promtool = require_binary("promtool")
    exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=sim.thread_ids())
    try:
        exporter.wait_ready()
        text = exporter.scrape_text()
    finally:
        exporter.stop()
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_history_is_read_once_never_counted_and_later_polls_are_one_request(start_exporter: ExporterStarter) -> None:
    sim = Simulator(scenario="history", seed=3, speed=SPEED).start()
    try:
        sim.engine.set_workload(False)
        quiesce(sim)
        exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=sim.thread_ids())
        try:
            exporter.wait_ready()
            history_pages = sum(1500 // 100 + 1 for _ in range(3))  # the seeded threads, 1,500 runs each

            def requests_and_polls() -> tuple[float, float]:
                s = exporter.scrape()
                return (total(s, "assistants_exporter_api_requests_total"),
                        total(s, "assistants_exporter_poll_duration_seconds_count"))

            wait_until(lambda: requests_and_polls()[0] >= history_pages, 30, 0.2, "the first full read")
            requests_before, polls_before = requests_and_polls()
            wait_until(lambda: requests_and_polls()[1] >= polls_before + 30, 30, 0.2, "30 more polls")
            requests_after, polls_after = requests_and_polls()
            # One request a poll; the two counters are read at one instant, so polls in flight (at most one
            # per thread) may have made their request and not yet been counted as polls.
            extra_requests = (requests_after - requests_before) - (polls_after - polls_before)
            assert abs(extra_requests) <= len(sim.thread_ids())
            samples = exporter.scrape()
            assert total(samples, FINISHED) == 0
            assert total(samples, "assistants_run_duration_seconds_count") == 0
        finally:
            exporter.stop()
    finally:
        sim.stop()
