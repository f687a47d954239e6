"""`assistants-exporter simulate`: bad arguments exit 2 in-process; a real process serves and stops on a signal."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from exporter.simulator.cli import _api_key, build_parser, main
from tests.helpers import REPO_ROOT

LAUNCH = "import sys; from exporter.simulator.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize(
    "argv",
    [
        ["--speed", "0"],
        ["--speed", "fast"],
        ["--listen", "8780"],
        ["--listen", "127.0.0.1:99999"],
        ["--scenario", "nope"],
        ["--sessions-scenario", "nope"],
        ["--stream-cut-rate", "2"],
        ["--stream-stall-rate", "-0.1"],
        ["--error-rate", "1.5"],
        ["--rate-limit-burst", "0"],
        ["--latency", "-1"],
        ["--api-key", "a", "--api-key-file", "b"],
        ["--api-key-file", "/nonexistent/key"],
        ["--api-key", " "],
        ["--bogus"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("assistants-exporter simulate: error:")


def _first_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError("the simulator printed nothing before the deadline") from None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SIMULATOR_API_KEY": "ignored-when-a-file-is-given"}
    argv = [
        "--listen",
        "127.0.0.1:0",
        "--scenario",
        "history",
        "--speed",
        "20",
        "--seed",
        "3",
        "--api-key-file",
        str(key_file),
        "--rate-limit-rps",
        "100",
        "--rate-limit-burst",
        "50",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        match = re.search(r"base_url=(\S+) threads=(\S+)", line)
        assert match, line
        base_url, threads = match.group(1), match.group(2).split(",")
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert len(threads) == 3
        headers = {"OpenAI-Beta": "assistants=v2"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
            ok = http.get(f"/threads/{threads[0]}/runs", headers={"Authorization": "Bearer sk-from-file"})
            assert ok.status_code == 200 and ok.json()["has_more"] is True
            assert ok.headers["x-ratelimit-limit-requests"] == "50"
            denied = http.get(f"/threads/{threads[0]}/runs", headers={"Authorization": "Bearer other"})
            assert denied.status_code == 401
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_cli_port_in_use_fails_cleanly() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCH, "--listen", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr


def test_api_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.setenv("SIMULATOR_API_KEY", "sk-env")
    assert _api_key(parser.parse_args([])) == "sk-env"
    assert _api_key(parser.parse_args(["--api-key", "sk-flag"])) == "sk-flag"
    (tmp_path / "k").write_text("sk-file\n")
    assert _api_key(parser.parse_args(["--api-key-file", str(tmp_path / "k")])) == "sk-file"
    monkeypatch.delenv("SIMULATOR_API_KEY")
    assert _api_key(parser.parse_args([])) is None  # any non-empty key is accepted
