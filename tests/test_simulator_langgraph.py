"""The simulator's langgraph flavor answers as the real LangGraph Agent Server does: the same requests, sent with
the official langgraph_sdk client to both (`langgraph dev` and the simulator), give the same field names in the
same order, the same ordering and the same paging, the same statuses and the same errors. Also its fault knobs
and its key check, on the simulator alone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess, total
from tests.helpers import REPO_ROOT, wait_until
from tests.langgraph_support import langgraph_dev, require_sdk
from tests.test_simulator_cli import LAUNCH, _first_line

pytestmark = pytest.mark.slow

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
THREAD_SELECT = ["thread_id", "created_at", "updated_at"]
RUN_SELECT = ["run_id", "status", "created_at", "updated_at", "assistant_id"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    require_sdk()
    sim = Simulator(flavor="langgraph", seed=3).start()
    sim.langgraph.workload = False
    sim.langgraph.threads.clear()  # its demo threads: both servers start empty
    try:
        with langgraph_dev(Path(tmp_path_factory.mktemp("langgraph"))) as real:
            yield {"real": real, "sim": sim.base_url}
    finally:
        sim.stop()


def _exercise(base: str) -> dict[str, Any]:
    """The same calls on one server; what came back."""
    sdk = require_sdk()
    client = sdk.get_sync_client(url=base)
    seen: dict[str, Any] = {}
    thread = client.threads.create(metadata={"suite": "compare"})
    tid = thread["thread_id"]
    seen["thread"] = thread
    seen["created_run"] = client.runs.create(tid, "work", input={"seconds": 0.1}, multitask_strategy="enqueue")
    for graph in ("fail", "work", "ask"):
        client.runs.create(tid, graph, input={"seconds": 0.1}, multitask_strategy="enqueue")
    other = client.threads.create()["thread_id"]
    slow = client.runs.create(other, "slow", input={"seconds": 30})
    client.runs.cancel(other, slow["run_id"])
    doomed = client.runs.create(other, "slow", input={"seconds": 30}, multitask_strategy="enqueue")
    client.runs.cancel(other, doomed["run_id"], action="rollback")
    client.threads.create()  # no runs

    def ended() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = client.runs.list(tid, limit=10)
        return runs if all(r["status"] not in ("pending", "running") for r in runs) else []

    seen["runs"] = wait_until(ended, 60, 0.2, f"the runs on {base} to end")
    seen["pages"] = [client.runs.list(tid, limit=3, offset=o) for o in (0, 3, 6)]
    seen["selected"] = client.runs.list(tid, limit=10, select=RUN_SELECT)
    seen["got"] = client.runs.get(tid, seen["runs"][0]["run_id"])
    seen["other"] = client.runs.list(other, limit=10, select=RUN_SELECT)
    seen["search"] = client.threads.search(limit=10, sort_by="updated_at", sort_order="desc", select=THREAD_SELECT)
    seen["search_default"] = client.threads.search(limit=10)
    seen["search_pages"] = [client.threads.search(limit=2, offset=o, sort_by="updated_at", sort_order="desc",
                                                  select=THREAD_SELECT) for o in (0, 2)]
    raw = httpx.Client(base_url=base, timeout=10)
    seen["missing"] = raw.get("/threads/00000000-0000-0000-0000-000000000000/runs")
    seen["not_uuid"] = raw.get("/threads/nonsense/runs")
    seen["too_many"] = raw.post("/threads/search", json={"limit": 1001})
    seen["cancel_done"] = raw.post(f"/threads/{other}/runs/{slow['run_id']}/cancel")
    raw.close()
    return seen


@pytest.fixture(scope="module")
def answers(servers: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {name: _exercise(base) for name, base in servers.items()}


def test_threads_and_runs_have_the_same_fields_in_the_same_order(answers: dict[str, dict[str, Any]]) -> None:
    real, sim = answers["real"], answers["sim"]
    assert list(sim["thread"]) == list(real["thread"])
    assert list(sim["created_run"]) == list(real["created_run"])
    assert list(sim["created_run"]["kwargs"]) == list(real["created_run"]["kwargs"])
    assert [list(r) for r in sim["runs"]] == [list(r) for r in real["runs"]]
    assert list(sim["got"]) == list(real["got"])
    assert [list(r) for r in sim["selected"]] == [list(r) for r in real["selected"]]
    assert [list(t) for t in sim["search"]] == [list(t) for t in real["search"]]
    assert [list(t) for t in sim["search_default"]] == [list(t) for t in real["search_default"]]


def test_the_same_statuses_order_times_and_paging(answers: dict[str, dict[str, Any]]) -> None:
    for name, seen in answers.items():
        runs = seen["runs"]
        assert [r["status"] for r in runs] == ["success", "success", "error", "success"], name
        assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True), name
        assert all(ISO.fullmatch(r["created_at"]) and ISO.fullmatch(r["updated_at"]) for r in runs), name
        assert all(r["updated_at"] > r["created_at"] for r in runs), name  # set again when a run ends
        pages = seen["pages"]
        assert [len(p) for p in pages] == [3, 1, 0], name
        assert [r["run_id"] for p in pages for r in p] == [r["run_id"] for r in runs], name
        assert [r["status"] for r in seen["other"]] == ["interrupted"], name  # the rolled back run is gone
        updated = [t["updated_at"] for t in seen["search"]]
        assert len(updated) == 3 and updated == sorted(updated, reverse=True), name
        assert [t["updated_at"] for t in seen["search_default"]] == updated, name  # the default order
        assert [t["thread_id"] for p in seen["search_pages"] for t in p] == [
            t["thread_id"] for t in seen["search"]][:4], name


def test_the_same_errors(answers: dict[str, dict[str, Any]]) -> None:
    for name, seen in answers.items():
        codes = [seen[k].status_code for k in ("missing", "not_uuid", "too_many", "cancel_done")]
        assert codes == [404, 422, 422, 404], name
        assert set(seen["missing"].json()) == {"detail"}, name


def test_fault_knobs_and_the_key_apply_to_the_langgraph_flavor() -> None:
    with Simulator(flavor="langgraph", seed=4, api_key="lsv2-key") as sim:
        sim.langgraph.workload = False
        thread = sim.langgraph.create_thread()
        sim.langgraph.create_run(thread)
        url = f"{sim.base_url}/threads/{thread}/runs"
        assert httpx.get(url).status_code == 403
        assert httpx.get(url, headers={"x-api-key": "other"}).json() == {"detail": "Missing or invalid x-api-key"}
        ok = httpx.get(url, headers={"x-api-key": "lsv2-key"})
        assert ok.status_code == 200 and len(ok.json()) == 1
        sim.faults.malformed_rate = 1.0
        body = httpx.get(url, headers={"x-api-key": "lsv2-key"}).json()
        assert body != ok.json() and len(body) == 1
        sim.faults.malformed_rate = 0.0
        sim.faults.error_rate = 1.0
        assert httpx.get(url, headers={"x-api-key": "lsv2-key"}).status_code >= 500


def test_the_cli_serves_the_langgraph_flavor_with_a_workload() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = ["--listen", "127.0.0.1:0", "--flavor", "langgraph", "--speed", "20"]
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *argv], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        match = re.search(r"base_url=(\S+) threads=(\S+)", _first_line(proc))
        assert match, "no start-up line"
        base, threads = match.groups()
        assert httpx.get(f"{base}/ok").json() == {"ok": True} and len(threads.split(",")) == 6
        runs = wait_until(lambda: httpx.get(f"{base}/threads/{threads.split(',')[0]}/runs").json(), 15, 0.1,
                          "the workload's first runs")
        assert {"run_id", "status", "created_at", "updated_at"} <= set(runs[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_demo_of_the_langgraph_source_counts_runs(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo", "--source", "langgraph", "--demo-speed", "20", "--state-file",
                                str(tmp_path / "state.db")], {"OPENAI_API_KEY": ""}, tmp_path / "exporter.log")
    exporter.start()
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_runs_finished_total", source="langgraph") >= 10, 30,
                   0.2, "the demo's runs to be counted")
        samples = exporter.scrape()
        assert total(samples, "assistants_exporter_api_requests_total", endpoint="search_threads") >= 1
        assert total(samples, "assistants_exporter_threads") >= 6
    finally:
        exporter.stop()
