"""The command line as a user meets it: the demo, bad configuration, the simulate subcommand."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exporter.model import RunSnapshot
from exporter.store import Store
from exporter.tracker import Tracker
from tests.exporter_process import ExporterProcess, total
from tests.helpers import REPO_ROOT, free_port, wait_until

SECRET = "sk-cli-test-secret-0123456789"


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-home", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "exporter", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


@pytest.mark.slow
def test_demo_serves_non_trivial_metrics_within_10_seconds(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo", "--state-file", str(tmp_path / "s.db")], log_path=tmp_path / "log").start()
    try:
        def busy() -> bool:
            if exporter.get("/metrics") is None:
                return False
            s = exporter.scrape()
            return total(s, "assistants_runs") > 0 and total(s, "assistants_runs_finished_total") > 0
        wait_until(busy, timeout=10, interval=0.2, what="demo metrics")
        samples = exporter.scrape()
        assert total(samples, "assistants_exporter_api_up") == 1
        assert total(samples, "assistants_exporter_threads") > 0
        health = exporter.get("/healthz")
        assert health is not None and health.status_code == 200
    finally:
        assert exporter.stop() == 0, exporter.logs()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--thread", "thread_1", "--state-file", "{tmp}/s.db"], {}, "API key"),
        (["--demo", "--poll-interval", "fast", "--state-file", "{tmp}/s.db"], {}, "--poll-interval"),
        (["--demo", "--config", "{tmp}/missing.yml"], {}, "missing.yml"),
        (["--demo", "--demo-scenario", "nope", "--state-file", "{tmp}/s.db"], {}, "--demo-scenario"),
        (["--thread", "thread_1", "--api-key-file", "{tmp}/no-key", "--state-file", "{tmp}/s.db"], {}, "no-key"),
        (["--thread", "t1", "--labels", "thread_id", "--state-file", "{tmp}/s.db"], {"OPENAI_API_KEY": SECRET},
         "--labels"),
        (["--thread", "t1", "--state-file", "{tmp}/s.db", "--listen", "127.0.0.1:0"],
         {"OPENAI_API_KEY": SECRET + "\u00e9"}, "api_key must be printable ASCII"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(tmp_path: Path, args: list[str], env: dict[str, str],
                                                 needle: str) -> None:
    result = _run([a.replace("{tmp}", str(tmp_path)) for a in args], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("assistants-exporter: error:"), result.stderr
    assert needle in lines[0]
    assert SECRET not in result.stderr + result.stdout


def test_a_taken_port_exits_2(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = _run(["--demo", "--listen", f"127.0.0.1:{port}", "--state-file", str(tmp_path / "s.db")])
    assert result.returncode == 2
    assert "address already in use" in result.stderr and result.stderr.count("\n") == 1


def test_demo_serves_on_ipv6_loopback(tmp_path: Path) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--demo", "--listen", f"[::1]:{port}",
                             "--state-file", str(tmp_path / "s.db")], cwd=REPO_ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthz() -> bool:
            assert proc.poll() is None, "exporter exited"
            try:
                return httpx.get(f"http://[::1]:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(healthz, timeout=15, what="/healthz on [::1]")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0  # SIGTERM stops the poll loop and the HTTP server cleanly


def test_a_corrupt_state_file_exits_2(tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    state.write_text("not sqlite " * 200)
    result = _run(["--thread", "t1", "--state-file", str(state), "--listen", f"127.0.0.1:{free_port()}"],
                  {"OPENAI_API_KEY": SECRET})
    assert result.returncode == 2 and "s.db" in result.stderr
    assert SECRET not in result.stderr


def _corrupt(state: Path, how: str) -> None:
    """A state file with one run, then broken the way `how` says."""
    if how == "empty":
        state.touch()
        return
    store = Store(state, [])
    tracker = Tracker([], 3600)
    tracker.observe_listing("t1", [RunSnapshot("r1", "t1", "completed", 100, completed_at=160)], 200.0,
                            complete=True, ok=True)
    store.commit(tracker.take_changes())
    store.close()
    if how == "text_in_number":
        with sqlite3.connect(state) as db:
            db.execute("UPDATE runs SET ended_at = 'soon'")
    else:  # a write version this SQLite does not know: it would open the file read-only
        header = bytearray(state.read_bytes())
        header[18] = 3
        state.write_bytes(bytes(header))


@pytest.mark.parametrize(("how", "says"), [
    ("text_in_number", "runs.ended_at holds text"),
    ("write_version", "cannot be written"),
    ("empty", "is empty (0 bytes), so the state it held is lost; delete it to start fresh"),
])
def test_every_kind_of_broken_state_file_exits_2_with_one_line(tmp_path: Path, how: str, says: str) -> None:
    """Regression (issue 16): a traceback, a run that could never write, and a silent fresh start."""
    state = tmp_path / "s.db"
    _corrupt(state, how)
    result = _run(["--thread", "t1", "--state-file", str(state), "--listen", f"127.0.0.1:{free_port()}"],
                  {"OPENAI_API_KEY": SECRET})
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("assistants-exporter: error: ") and str(state) in line and says in line
    assert "start fresh" in line or "start with empty state" in line


def test_simulate_subcommand_rejects_bad_arguments() -> None:
    result = _run(["simulate", "--scenario", "no-such-scenario"])
    assert result.returncode == 2
    assert "no-such-scenario" in result.stderr


def test_version() -> None:
    result = _run(["--version"])
    assert result.returncode == 0 and result.stdout.startswith("assistants-exporter ")
