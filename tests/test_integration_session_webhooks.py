"""The real daemon with `--source sessions` and session webhooks, as a subprocess, against the simulator: idle
sessions and discovery are on intervals far longer than the test, so turns in idle sessions and new sessions
are read only because a signed `agent.session.*` event said so. Totals, error codes, tokens and durations
equal the simulator's truth exactly, through duplicated, reordered, late and tampered deliveries and a
`kill -9` midway."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from exporter.simulator import Simulator
from exporter.simulator.webhooks import Announcers, WebhookFaults, WebhookSender
from exporter.sources.webhooks import SESSION_EVENTS
from tests.conftest import ExporterStarter, SimFactory
from tests.exporter_process import by_label, total
from tests.helpers import wait_until
from tests.test_integration_sessions import EXPORTER_ENV, FINISHED, SPEED, _assert_totals_match, _quiesce

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"integration-session-webhooks-key").decode()
WEBHOOKS = "assistants_exporter_webhooks_total"
LONG = "600"  # seconds: an idle poll or a discovery pass on its own schedule never comes within the test


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(seed=21, speed=SPEED, sessions_scenario="sessions")


def test_session_webhooks_drive_polling_exactly_through_faults_and_a_kill_9(
        sim: Simulator, start_exporter: ExporterStarter, tmp_path: Path) -> None:
    (tmp_path / "secrets").write_text(SECRET + "\n")
    flags = ("--source", "sessions", "--webhook-secret-file", str(tmp_path / "secrets"), "--poll-interval", "0.2",
             "--idle-poll-interval", LONG, "--discover-interval", LONG, "--max-requests-per-second", "1000",
             "--max-concurrency", "16")
    # History: sessions that exist before the exporter starts, all idle.
    sim.sessions.set_workload(True)
    wait_until(lambda: len(sim.sessions.session_ids()) >= 4, 30, 0.1, "some sessions")
    sim.sessions.set_workload(False)
    _quiesce(sim)
    sim.sessions.take_events()  # what happened before the exporter listens is not sent
    exporter = start_exporter(sim, *flags, env=EXPORTER_ENV)
    faults = WebhookFaults(duplicate=0.3, reorder=True, late=0.2, late_seconds=1.0, bad_signature=0.1, seed=4)
    sender = WebhookSender(Announcers(sim.sessions), exporter.url + "/webhooks/openai", SECRET, faults)
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_runs") == sum(sim.sessions.truth().by_status.values()),
                   30, 0.2, "the first sweep")
        since = int(sim.sessions.now()) + 1
        wait_until(lambda: sim.sessions.now() >= since, 5, 0.02, "the next second")
        sender.start()
        sim.sessions.set_workload(True)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 20, 60, 0.2, "some counted turns")
        exporter.kill9()
        down = sum(sim.sessions.truth(since).finished.values()) + 10
        wait_until(lambda: sum(sim.sessions.truth(since).finished.values()) >= down, 60, 0.1, "downtime")
        exporter = start_exporter(sim, *flags, env=EXPORTER_ENV)
        sender.url = exporter.url + "/webhooks/openai"  # a new port: the old one refuses, and is retried
        exporter.wait_ready()
        wait_until(lambda: sum(sim.sessions.truth(since).finished.values()) >= down + 30, 60, 0.1, "more turns")
        sim.sessions.set_workload(False)
        _quiesce(sim)
        wait_until(sender.idle, 60, 0.1, "every delivery to be answered")
        samples = _assert_totals_match(exporter, sim, since)
        assert sender.given_up == 0
        assert total(samples, "assistants_exporter_threads") == len(sim.sessions.session_ids())
        types = {k for k, v in by_label(samples, WEBHOOKS, "type").items() if v}
        assert {"agent.session.created", "agent.session.in_progress", "agent.session.idle"} <= types
        assert types <= {*SESSION_EVENTS, "unverified"}
        outcomes = by_label(samples, WEBHOOKS, "outcome")
        assert outcomes["accepted"] > 0 and outcomes["duplicate"] > 0
        assert 0 < outcomes["bad_signature"] <= sender.tampered_refused
    finally:
        sender.stop()
        exporter.stop()
