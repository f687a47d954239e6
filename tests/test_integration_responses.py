"""The real daemon, as a subprocess, against the simulator's Responses API, three ways in: webhooks only
(no API key), pushed ids polled by id, and Foundry-style discovery. Counts by status, error codes and
reasons must equal the simulator's truth exactly, through duplicate, reordered and late deliveries, tampered
copies and a `kill -9` midway."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from exporter.simulator import Simulator
from exporter.simulator.responses import TERMINAL
from exporter.simulator.webhooks import WebhookFaults, WebhookSender
from tests.conftest import SimFactory
from tests.exporter_process import ExporterProcess, Samples, by_label, total
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

SPEED = 5.0  # queued 0.1-0.6 s, working 0.2-1.2 s
SECRET = "whsec_" + base64.b64encode(b"integration-webhook-secret-32byt").decode()
PUSH_TOKEN = "push-token-for-the-integration-test"
FINISHED = "assistants_runs_finished_total"
WEBHOOKS = "assistants_exporter_webhooks_total"


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(workload=True, seed=9, speed=SPEED)


def _exporter(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> ExporterProcess:
    base = ["--state-file", str(tmp_path / "state.db"), "--poll-interval", "0.2",
            "--max-requests-per-second", "500", "--log-level", "info"]
    # No key in the environment unless the test gives one: webhooks-only must work without it.
    clean = {"OPENAI_API_KEY": "", "ASSISTANTS_EXPORTER_API_KEY": "", **(env or {})}
    return ExporterProcess([*base, *args], clean, tmp_path / "exporter.log").start()


def _all_terminal(sim: Simulator) -> None:
    wait_until(sim.responses.all_terminal, 30, 0.1, "simulated responses to finish")


def _assert_matches_truth(exporter: ExporterProcess, sim: Simulator, details: bool) -> Samples:
    """Finished counts by status equal the truth; with `details` (the responses were fetched), error codes,
    reasons and tokens too; without (events alone), codes and reasons are all `unknown`."""
    truth = sim.responses.truth()
    want = {s: float(n) for s, n in truth.by_status.items() if s in TERMINAL}
    seen: list[dict[str, float]] = []

    def finished() -> bool:
        seen.append({k: v for k, v in by_label(exporter.scrape(), FINISHED, "status").items() if v})
        return seen[-1] == want
    wait_until(finished, 30, 0.2, lambda: f"finished totals to equal {want}, last seen {seen[-1] if seen else None}")
    samples = exporter.scrape()
    errors = {k: v for k, v in by_label(samples, "assistants_run_errors_total", "code").items() if v}
    reasons = {k: v for k, v in by_label(samples, "assistants_run_incomplete_total", "reason").items() if v}
    if not details:
        assert errors == {"unknown": want.get("failed", 0.0)} and reasons == {"unknown": want.get("incomplete", 0.0)}
        return samples
    assert errors == {k: float(v) for k, v in truth.errors.items()}
    assert reasons == {k: float(v) for k, v in truth.reasons.items()}
    if details:
        assert by_label(samples, "assistants_run_tokens_total", "type") == {
            "prompt": float(truth.input_tokens), "completion": float(truth.output_tokens)}
    return samples


def test_webhooks_only_count_from_the_events_through_faults_and_a_kill_9(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "secrets").write_text("# current\n" + SECRET + "\n")
    args = ["--source", "responses", "--webhook-secret-file", str(tmp_path / "secrets")]
    exporter = _exporter(tmp_path, args)
    sender: WebhookSender | None = None
    try:
        exporter.wait_ready()
        faults = WebhookFaults(duplicate=0.3, reorder=True, late=0.2, late_seconds=1.0, bad_signature=0.15, seed=5)
        sender = WebhookSender(sim.responses, exporter.url + "/webhooks/openai", SECRET, faults).start()
        sim.responses.spawn(40)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 10, 30, 0.1, "some counted events")
        exporter.kill9()
        sim.responses.spawn(30)  # events of these are retried until the exporter is back
        wait_until(lambda: len(sender.sent) > 60, 30, 0.1, "deliveries while down")
        exporter = _exporter(tmp_path, args)
        sender.url = exporter.url + "/webhooks/openai"  # a new port: the old one still refuses
        exporter.wait_ready()
        _all_terminal(sim)
        wait_until(sender.idle, 60, 0.1, "every delivery to be answered")
        samples = _assert_matches_truth(exporter, sim, details=False)
        outcomes = by_label(samples, WEBHOOKS, "outcome")
        # A refusal is counted at once, not in the commit of an event: one refused in the last tick before the
        # kill may be missing, never one too many.
        assert outcomes["duplicate"] > 0 and 0 < outcomes["bad_signature"] <= sender.tampered_refused
        assert sender.given_up == 0
        # counted under the webhooks source, and nothing was ever polled (there is no key)
        assert total(samples, FINISHED, source="webhooks") == sum(by_label(samples, FINISHED, "status").values())
        assert total(samples, "assistants_exporter_api_requests_total") == 0
    finally:
        if sender is not None:
            sender.stop()
        exporter.stop()


def test_pushed_ids_are_polled_until_they_end_with_a_kill_9(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(PUSH_TOKEN + "\n")
    args = ["--source", "responses", "--api-base", sim.base_url, "--push-token-file", str(tmp_path / "tokens")]
    env = {"OPENAI_API_KEY": "sk-test-integration"}
    exporter = _exporter(tmp_path, args, env)
    auth = {"Authorization": f"Bearer {PUSH_TOKEN}"}
    try:
        exporter.wait_ready()
        api = httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer sk-test"})

        def create(n: int) -> list[dict[str, object]]:
            return [api.post("/responses", json={"model": "gpt-4o", "input": "x", "background": True}).json()
                    for _ in range(n)]

        for resp in create(25):  # by registration, twice each (the second is "exists")
            for _ in range(2):
                r = httpx.put(f"{exporter.url}/api/v1/responses/{resp['id']}", headers=auth)
                assert r.status_code == 200, r.text
        pushed = create(15)  # as Response objects pushed to /api/v1/runs
        r = httpx.post(f"{exporter.url}/api/v1/runs", json=pushed, headers=auth)
        assert r.status_code == 200 and r.json()["accepted"] == 15, r.text
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 10, 30, 0.1, "some finished")
        exporter.kill9()
        exporter = _exporter(tmp_path, args, env)  # the registrations survive: polling resumes
        exporter.wait_ready()
        _all_terminal(sim)
        samples = _assert_matches_truth(exporter, sim, details=True)
        assert total(samples, "assistants_exporter_api_requests_total", source="responses",
                     endpoint="get_response", code="200") > 0
        wait_until(lambda: total(exporter.scrape(), "assistants_runs", status="queued")
                   + total(exporter.scrape(), "assistants_runs", status="in_progress") == 0, 10, 0.2, "gauges")
    finally:
        exporter.stop()


def test_foundry_discovery_finds_an_agents_responses(tmp_path: Path) -> None:
    with Simulator(seed=3, speed=SPEED, flavor="foundry") as sim:
        env = {"IDENTITY_ENDPOINT": sim.identity_endpoint, "IDENTITY_HEADER": sim.identity_header,
               "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}
        args = ["--source", "responses", "--api-base", f"{sim.base_url}/openai/v1", "--credential", "azure",
                "--discover-responses", "--agent", "billing", "--discover-interval", "1"]
        exporter = _exporter(tmp_path, args, env)
        try:
            exporter.wait_ready()
            mine = sim.responses.spawn(30, agent_name="billing")
            sim.responses.spawn(10, agent_name="other")
            _all_terminal(sim)
            truth = sim.responses.truth("billing")
            want = {s: float(n) for s, n in truth.by_status.items()}
            seen: list[dict[str, float]] = []

            def counted() -> bool:
                seen.append({k: v for k, v in by_label(exporter.scrape(), FINISHED, "status").items() if v})
                return seen[-1] == want
            wait_until(counted, 30, 0.2, lambda: f"{want}, last seen {seen[-1] if seen else None}")
            samples = exporter.scrape()
            assert total(samples, FINISHED, source="responses") == len(mine)
            errors = {k: v for k, v in by_label(samples, "assistants_run_errors_total", "code").items() if v}
            assert errors == {k: float(v) for k, v in truth.errors.items()}
            assert total(samples, "assistants_exporter_api_requests_total", endpoint="list_responses") > 0
        finally:
            exporter.stop()
