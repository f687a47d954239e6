"""The real daemon with `--source sessions` holding live session streams, as a subprocess, against the
simulator: a streamed session is not polled while its stream is up, and totals, error codes, tokens and
durations equal the simulator's truth exactly through streams cut mid-event, stalled streams (hangs),
duplicated events and a `kill -9`."""

from __future__ import annotations

import pytest

from exporter.simulator import Simulator
from tests.conftest import ExporterStarter, SimFactory
from tests.exporter_process import ExporterProcess, total
from tests.helpers import wait_until
from tests.test_integration_sessions import (
    EXPORTER_ENV,
    FINISHED,
    SPEED,
    _assert_totals_match,
    _finished,
    _quiesce,
    _start_workload,
)

pytestmark = pytest.mark.slow

REQUESTS = "assistants_exporter_api_requests_total"
FLAGS = ("--source", "sessions", "--discover-interval", "1", "--poll-interval", "0.2", "--idle-poll-interval", "0.5",
         "--max-requests-per-second", "1000", "--max-concurrency", "16", "--session-stream-keepalive", "1")


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    sim = make_sim(seed=31, speed=SPEED, sessions_scenario="sessions")
    sim.sessions.set_workload(False)  # the tests start it
    sim.stream_faults.keepalive = 0.2
    return sim


def _requests(exporter: ExporterProcess, endpoint: str, code: str | None = None) -> float:
    labels = {"endpoint": endpoint, **({"code": code} if code else {})}
    return total(exporter.scrape(), REQUESTS, **labels)


def test_a_streamed_session_is_not_polled_and_its_turn_ends_from_the_stream(
        sim: Simulator, start_exporter: ExporterStarter) -> None:
    sid = sim.sessions.create_session()
    exporter = start_exporter(sim, *FLAGS, env=EXPORTER_ENV)
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads") == 1, 10, 0.1, "the session")
        sim.sessions.create_turn(sid, [("queued", 0.5), ("in_progress", 6.0), ("completed", 0.0)],
                                 input_tokens=11, output_tokens=7)
        wait_until(lambda: _requests(exporter, "session_events", "200") >= 1, 10, 0.1, "the stream to open")
        wait_until(lambda: total(exporter.scrape(), "assistants_runs", status="in_progress") == 1, 10, 0.05,
                   "the turn in progress")
        before = _requests(exporter, "list_turns")
        start = sim.sessions.now()
        wait_until(lambda: sim.sessions.now() >= start + 3.0, 10, 0.05, "3 s of a streamed turn")
        # At most the listing owed after the stream opened: a poll every 0.2 s would be 15.
        assert _requests(exporter, "list_turns") - before <= 2
        wait_until(lambda: total(exporter.scrape(), FINISHED, status="completed") == 1, 15, 0.05, "the end")
        samples = exporter.scrape()
        assert total(samples, "assistants_run_tokens_total", type="prompt") == 11
        assert total(samples, "assistants_run_duration_seconds_count", status="completed") == 1
        assert total(samples, "assistants_exporter_api_up", source="sessions") == 1
    finally:
        exporter.stop()


def test_totals_are_exact_through_cut_stalled_and_duplicated_streams_and_a_kill_9(
        sim: Simulator, start_exporter: ExporterStarter) -> None:
    faults = sim.stream_faults
    # A stall lasts longer than the test: only the exporter's hang detection gets those sessions read again.
    faults.cut, faults.stall, faults.duplicate, faults.stall_seconds = 0.08, 0.1, 0.2, 600.0
    exporter = start_exporter(sim, *FLAGS, env=EXPORTER_ENV)
    try:
        exporter.wait_ready()
        since = _start_workload(sim)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 25, 60, 0.2, "some counted turns")
        exporter.kill9()
        down = _finished(sim, since) + 15
        wait_until(lambda: _finished(sim, since) >= down, 60, 0.1, "downtime")
        exporter = start_exporter(sim, *FLAGS, env=EXPORTER_ENV)
        exporter.wait_ready()
        wait_until(lambda: _finished(sim, since) >= down + 40, 90, 0.1, "more turns")
        # The knobs draw per event: go on until both a cut and a stall have happened (a run without a cut was
        # seen once, which proved nothing about cuts).
        wait_until(lambda: faults.cuts_made > 0 and faults.stalls_made > 0, 90, 0.1, "a cut and a stall")
        sim.sessions.set_workload(False)
        _quiesce(sim)
        samples = _assert_totals_match(exporter, sim, since)
        assert total(samples, REQUESTS, endpoint="session_events", code="200") > 10
        assert faults.cuts_made > 0 and faults.stalls_made > 0
    finally:
        exporter.stop()
