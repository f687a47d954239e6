"""The real exporter (`--source langgraph --discover-threads`, a subprocess) against the real LangGraph Agent
Server (`langgraph dev`, in memory), driven through the official langgraph_sdk client: runs that succeed,
raise, pause for a human (interrupt()), are cancelled, are interrupted by a newer run, time out, and one that
is rolled back (deleted); threads created while the exporter runs and while it is down after a `kill -9`.
At the end every finished total on /metrics equals the server's own count of runs per status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.model_langgraph import LANGGRAPH_STATUSES
from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess, by_label, total
from tests.helpers import wait_until
from tests.langgraph_support import langgraph_dev, require_sdk, server_runs

pytestmark = pytest.mark.slow

FINISHED = "assistants_runs_finished_total"
TERMINAL_WIRE = ("success", "error", "timeout", "interrupted")
FLAGS = ("--source", "langgraph", "--discover-threads", "--discover-interval", "1", "--poll-interval", "0.2",
         "--idle-poll-interval", "0.5", "--max-requests-per-second", "1000", "--terminal-retention", "3600")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with langgraph_dev(tmp_path) as base:
        yield base


def _exporter(base: str, tmp_path: Path) -> ExporterProcess:
    args = ["--api-base", base, "--state-file", str(tmp_path / "state.db"), *FLAGS]
    # A key the local server does not check: it goes out as x-api-key, and OPENAI_API_KEY is never read.
    env = {"LANGSMITH_API_KEY": "lsv2_sk_integration", "OPENAI_API_KEY": ""}
    return ExporterProcess(args, env, tmp_path / "exporter.log").start()


def _thread_of_runs(client: Any, kind: int) -> list[str]:
    """A new thread with a few runs queued on it; `kind` picks which endings it gets. Returns the run ids."""
    thread = client.threads.create(metadata={"test": "integration"})["thread_id"]

    def create(graph: str, seconds: float, strategy: str = "enqueue") -> str:
        run: dict[str, Any] = client.runs.create(thread, graph, input={"seconds": seconds},
                                                 multitask_strategy=strategy)
        return str(run["run_id"])

    made = [create("work", 0.2), create("fail", 0.1)]
    if kind % 4 == 0:
        made.append(create("ask", 0.1))  # pauses for a human: the run ends success
    elif kind % 4 == 1:
        slow = create("slow", 30)
        client.runs.cancel(thread, slow)  # interrupted
        made.append(slow)
    elif kind % 4 == 2:
        made.append(create("slow", 30))  # the server's limit ends it: timeout
    else:
        made.append(create("slow", 30))
        made.append(create("work", 0.1, strategy="interrupt"))  # the slow one is interrupted by it
    return made


def _all_finished(client: Any) -> dict[str, dict[str, Any]]:
    runs = server_runs(client)
    return runs if all(r["status"] in TERMINAL_WIRE for r in runs.values()) else {}


def test_finished_totals_equal_the_servers_count_across_new_threads_and_a_kill_9(server: str,
                                                                                 tmp_path: Path) -> None:
    sdk = require_sdk()
    client = sdk.get_sync_client(url=server)
    # History: runs that ended before the exporter started are never counted.
    history_thread = client.threads.create()["thread_id"]
    for graph in ("work", "fail"):
        client.runs.create(history_thread, graph, input={"seconds": 0.1}, multitask_strategy="enqueue")
    history = wait_until(lambda: _all_finished(client), 30, 0.2, "the history runs to end")

    exporter = _exporter(server, tmp_path)
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_runs") == len(history), 30, 0.2, "the sweep")
        assert total(exporter.scrape(), FINISHED) == 0
        for kind in range(4):
            _thread_of_runs(client, kind)
        wait_until(lambda: total(exporter.scrape(), FINISHED) >= 4, 60, 0.2, "some counted finishes")
        exporter.kill9()
        # Threads open and runs end while the exporter is down; the old thread gets runs too.
        down = [run_id for kind in range(4, 8) for run_id in _thread_of_runs(client, kind)]
        client.runs.create(history_thread, "work", input={"seconds": 0.1}, multitask_strategy="enqueue")
        rolled = client.runs.create(history_thread, "slow", input={"seconds": 30}, multitask_strategy="enqueue")
        client.runs.cancel(history_thread, rolled["run_id"], action="rollback")  # deleted: never counted
        wait_until(lambda: finished(client, down) >= len(down) // 2, 60, 0.2, "runs to end during the downtime")
        exporter = _exporter(server, tmp_path)
        exporter.wait_ready()
        for kind in range(8, 12):
            _thread_of_runs(client, kind)
        runs = wait_until(lambda: _all_finished(client), 90, 0.3, "every run to end")
        _assert_totals_match(exporter, runs, set(history))
    finally:
        exporter.stop()
    log = (tmp_path / "exporter.log").read_text(errors="replace")
    assert f"sources langgraph; api {server};" in log and "lsv2_sk_integration" not in log


def finished(client: Any, run_ids: list[str]) -> int:
    runs = server_runs(client)
    return sum(1 for run_id in run_ids if runs[run_id]["status"] in TERMINAL_WIRE)


def _assert_totals_match(exporter: ExporterProcess, runs: dict[str, dict[str, Any]], history: set[str]) -> None:
    counted = [r for run_id, r in runs.items() if run_id not in history]
    want = Counter(LANGGRAPH_STATUSES[r["status"]] for r in counted)
    assert set(want) == {"completed", "failed", "cancelled", "expired"}, want  # every ending was exercised
    seen: list[dict[str, float]] = []

    def equal() -> bool:
        seen.append({k: v for k, v in by_label(exporter.scrape(), FINISHED, "status").items() if v})
        return seen[-1] == {k: float(v) for k, v in want.items()}

    wait_until(equal, 30, 0.2, lambda: f"finished totals {dict(want)}, last seen {seen[-1] if seen else None}")
    samples = exporter.scrape()
    assert total(samples, FINISHED, source="langgraph") == len(counted)
    per_assistant = Counter(r["assistant_id"] for r in counted)
    assert {k: v for k, v in by_label(samples, FINISHED, "assistant_id").items() if v} == {
        k: float(v) for k, v in per_assistant.items()}
    assert total(samples, "assistants_exporter_threads") == len({r["thread_id"] for r in runs.values()})
    assert total(samples, "assistants_exporter_api_up", source="langgraph") == 1
    endpoints = by_label(samples, "assistants_exporter_api_requests_total", "endpoint")
    assert set(endpoints) == {"list_runs", "search_threads"}
    codes = by_label(samples, "assistants_exporter_api_requests_total", "code")
    assert set(codes) == {"200"}
    invalid = sum(by_label(samples, "assistants_exporter_invalid_objects_total", "reason").values())
    assert invalid == 0


def test_every_fault_on_then_off_and_the_totals_equal_the_simulators(tmp_path: Path) -> None:
    """The simulator's langgraph flavor with its workload (new threads too) and every fault knob on: the
    exporter never counts more than happened, keeps running, and once the faults stop its totals are exact."""
    with Simulator(flavor="langgraph", seed=9, speed=10) as sim:
        sim.langgraph.set_workload(False)
        assert sum(sim.langgraph.truth().values()) == 0  # nothing ran before the exporter's sweep
        exporter = _exporter(sim.base_url, tmp_path)
        try:
            exporter.wait_ready()
            threads = sim.langgraph.thread_ids()
            wait_until(lambda: all(sim.langgraph.listed[t] for t in threads), 30, 0.1,
                       "the simulator's threads to be swept")  # listed with no fault on: swept
            faults = sim.faults
            faults.error_rate, faults.malformed_rate, faults.truncate_rate = 0.05, 0.05, 0.03
            faults.rate_limit_rps, faults.rate_limit_burst = 40.0, 5
            sim.langgraph.set_workload(True)
            wait_until(lambda: total(exporter.scrape(), "assistants_exporter_api_requests_total", code="429") > 0
                       and total(exporter.scrape(), FINISHED) >= 30, 60, 0.2, "faults met and runs counted")
            counted = by_label(exporter.scrape(), FINISHED, "status")
            truth = sim.langgraph.truth()  # read after the scrape: it can only have grown since
            assert all(counted.get(LANGGRAPH_STATUSES[s], 0) <= truth.get(s, 0) for s in TERMINAL_WIRE), (
                counted, truth)
            faults.error_rate = faults.malformed_rate = faults.truncate_rate = 0.0
            faults.rate_limit_rps = None
            sim.langgraph.set_workload(False)
            wait_until(lambda: not {"pending", "running"} & set(sim.langgraph.truth()), 30, 0.2, "runs to end")
            want = {LANGGRAPH_STATUSES[s]: float(n) for s, n in sim.langgraph.truth().items()}
            seen: list[dict[str, float]] = []

            def equal() -> bool:
                seen.append({k: v for k, v in by_label(exporter.scrape(), FINISHED, "status").items() if v})
                return seen[-1] == want

            wait_until(equal, 60, 0.2, lambda: f"totals {want}, last seen {seen[-1] if seen else None}")
            samples = exporter.scrape()
            assert total(samples, "assistants_exporter_threads") == len(sim.langgraph.thread_ids()) > 6
            invalid = by_label(samples, "assistants_exporter_invalid_objects_total", "reason")
            assert invalid.get("malformed_page", 0) > 0 and sum(invalid.values()) > invalid["malformed_page"]
            codes = by_label(samples, "assistants_exporter_api_requests_total", "code")
            assert codes.get("500", 0) + codes.get("503", 0) > 0
        finally:
            exporter.stop()
