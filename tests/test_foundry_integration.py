"""The real daemon, as a subprocess, against the Foundry simulator: Entra ID tokens from a real azure-identity
credential chain (managed identity on loopback), and threads found by discovery alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from exporter import statuses
from exporter.simulator import Simulator
from tests.conftest import SimFactory
from tests.exporter_process import ExporterProcess, by_label, total
from tests.helpers import wait_until
from tests.simulator_support import quiesce

pytestmark = pytest.mark.slow

SPEED = 40
FINISHED = "assistants_runs_finished_total"
# azure-identity asks for a new token once fewer than 300 s are left, so 305 s means a refresh every ~5 s.
TOKEN_LIFETIME = 305.0
POLL, IDLE, DISCOVER = 0.2, 0.5, 1.0


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(scenario="discovery", seed=11, speed=SPEED, flavor="foundry", token_lifetime=TOKEN_LIFETIME)


def _env(sim: Simulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "OPENAI_"))}
    return {**env, "IDENTITY_ENDPOINT": sim.identity_endpoint, "IDENTITY_HEADER": sim.identity_header,
            "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}


def _start(sim: Simulator, tmp_path: Path) -> ExporterProcess:
    args = ["--api-base", sim.base_url, "--api-version", "v1", "--credential", "azure", "--discover-threads",
            "--discover-interval", str(DISCOVER), "--state-file", str(tmp_path / "state.db"),
            "--poll-interval", str(POLL), "--idle-poll-interval", str(IDLE), "--max-requests-per-second", "500"]
    exporter = ExporterProcess(args, None, tmp_path / "exporter.log")
    exporter.env = _env(sim)
    exporter.env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return exporter.start()




def test_discovered_threads_with_refreshed_tokens_match_the_truth_across_a_kill(sim: Simulator,
                                                                                 tmp_path: Path) -> None:
    quiesce(sim)
    exporter = _start(sim, tmp_path)
    try:
        exporter.wait_ready()
        # Everything already listed is history; wait until discovery and the sweeps have seen it all.
        want = sum(sim.engine.truth().by_status.values())
        wait_until(lambda: total(exporter.scrape(), "assistants_runs") == want, 30, 0.2, "initial sweep")
        since = sim.engine.truth().now + 1
        wait_until(lambda: sim.engine.now() >= since, 5, 0.05, "the next second")
        issued_before = sim.tokens.issued
        sim.engine.set_workload(True)  # arrivals open new threads: only discovery can find them
        wait_until(lambda: sum(sim.engine.truth(since).finished.values()) >= 25, 90, 0.2, "first half")
        exporter.kill9()
        exporter = _start(sim, tmp_path)
        exporter.wait_ready()
        wait_until(lambda: sum(sim.engine.truth(since).finished.values()) >= 50, 90, 0.2, "second half")
        # Keep runs arriving until the credential has refreshed its token at least three times.
        wait_until(lambda: sim.tokens.issued - issued_before >= 4, 90, 0.2, "three token refreshes")
        sim.engine.set_workload(False)
        quiesce(sim)
        truth = sim.engine.truth(since)
        want_finished = {s: float(truth.finished.get(s, 0)) for s in statuses.TERMINAL_STATUSES}
        seen: list[dict[str, float]] = []
        wait_until(lambda: seen.append(by_label(exporter.scrape(), FINISHED, "status")) or seen[-1] == want_finished,
                   60, 0.2, lambda: f"finished totals {want_finished}, last seen {seen[-1] if seen else None}")
        samples = exporter.scrape()
        errors = {k: v for k, v in by_label(samples, "assistants_run_errors_total", "code").items() if v}
        assert errors == {k: float(v) for k, v in truth.error_codes.items()}
        reasons = {k: v for k, v in by_label(samples, "assistants_run_incomplete_total", "reason").items() if v}
        assert reasons == {k: float(v) for k, v in truth.incomplete_reasons.items()}
        assert total(samples, "assistants_exporter_discovered_threads_total") > 0
        codes = by_label(samples, "assistants_exporter_api_requests_total", "code")
        assert codes.get("401", 0) == 0, codes
        endpoints = by_label(samples, "assistants_exporter_api_requests_total", "endpoint")
        assert endpoints.get("list_threads", 0) > 0 and endpoints.get("list_runs", 0) > 0
        assert sim.tokens.issued - issued_before >= 4  # a token for each process, and refreshes
        assert total(samples, "assistants_exporter_api_up", source="threads") == 1

        # Steady state with every run finished: each thread once per idle interval, one discovery request per
        # discovery interval (the first thread it lists is known).
        threads = total(samples, "assistants_exporter_threads")
        window = 6.0
        before = total(exporter.scrape(), "assistants_exporter_api_requests_total")
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started >= window, window + 5, 0.5, "the measuring window")
        made = total(exporter.scrape(), "assistants_exporter_api_requests_total") - before
        elapsed = time.monotonic() - started
        ideal = threads * elapsed / IDLE + elapsed / DISCOVER
        print(f"steady state: {made:.0f} requests in {elapsed:.1f} s, ideal {ideal:.1f} ({made / ideal:.2f}x)")
        assert made <= 1.25 * ideal
    finally:
        exporter.stop()
    log = (tmp_path / "exporter.log").read_text()
    assert "Traceback" not in log
