"""The real LangGraph Agent Server for tests and benches: `langgraph dev` (langgraph-cli[inmem]) on loopback,
serving the plain-node graphs of tests/fixtures/langgraph (work, fail, ask, slow), and the server's own count
of runs per status, read through the official langgraph_sdk client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO_ROOT, free_port, in_ci, require_binary, wait_until

GRAPHS = REPO_ROOT / "tests" / "fixtures" / "langgraph"
# Runs of the `slow` graph (30 s by default) end `timeout` after this many seconds (the server's own limit).
RUN_TIMEOUT = 3


def require_sdk() -> Any:
    """The langgraph_sdk module; skip without it, but fail under CI=true (the dev extra installs it)."""
    try:
        import langgraph_sdk
    except ImportError:
        if in_ci():
            pytest.fail("langgraph-sdk is required under CI=true (pip install -e '.[dev]')")
        pytest.skip("langgraph-sdk not installed")
    return langgraph_sdk


@contextmanager
def langgraph_dev(workdir: Path, run_timeout: int = RUN_TIMEOUT) -> Iterator[str]:
    """`langgraph dev` on a free loopback port in a copy of the graphs (it writes its state beside them); yields
    its base URL once /ok answers; the whole process group is stopped at the end."""
    # The dev extra installs the command beside this interpreter; PATH may not show it yet (pyenv's shims are
    # made after an install), so look there first.
    beside = Path(sys.executable).with_name("langgraph")
    binary = str(beside) if beside.is_file() else require_binary("langgraph")
    folder = workdir / "graphs"
    shutil.copytree(GRAPHS, folder, ignore=shutil.ignore_patterns(".langgraph_api", "__pycache__"))
    port = free_port()
    env = {**os.environ, "BG_JOB_TIMEOUT_SECS": str(run_timeout), "LANGSMITH_TRACING": "false",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    env.pop("LANGSMITH_API_KEY", None)
    log = open(workdir / "langgraph.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([binary, "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser",
                             "--no-reload"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"langgraph dev exited: {_tail(workdir / 'langgraph.log')}"
            try:
                return httpx.get(f"{base}/ok", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, 0.2, "langgraph dev to answer /ok")
        yield base
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def server_runs(client: Any) -> dict[str, dict[str, Any]]:
    """Every run the server lists, by run id, read with the sync SDK client (all threads, all runs)."""
    runs: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        threads = client.threads.search(limit=100, offset=offset, select=["thread_id"])
        for thread in threads:
            for run in client.runs.list(thread["thread_id"], limit=10_000,
                                        select=["run_id", "thread_id", "assistant_id", "status"]):
                runs[run["run_id"]] = run
        if len(threads) < 100:
            return runs
        offset += 100
