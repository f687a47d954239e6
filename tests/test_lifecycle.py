"""The exporter process's lifecycle: the start-up line, SIGTERM mid-push, and SIGHUP re-reading its files."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from exporter.simulator import Simulator
from exporter.store import Store
from tests.conftest import SimFactory
from tests.exporter_process import ExporterProcess, total
from tests.helpers import wait_until
from tests.tls_support import bcrypt_hash

pytestmark = pytest.mark.slow

TOKEN = "push-token-0123456789abcdef"
NEW_TOKEN = "push-token-fedcba9876543210"
SHUTDOWN_BUDGET = 5.0  # seconds from SIGTERM to exit


def _push_exporter(tmp_path: Path, *extra: str) -> ExporterProcess:
    tokens = tmp_path / "tokens"
    if not tokens.exists():
        tokens.write_text(TOKEN + "\n")
    return ExporterProcess(["--source", "push", "--push-token-file", str(tokens), "--state-file",
                            str(tmp_path / "state.db"), *extra], log_path=tmp_path / "exporter.log").start()


def _log(exporter: ExporterProcess) -> str:
    assert exporter.log_path is not None
    return exporter.log_path.read_text(errors="replace")


def _push(url: str, token: str, items: list[dict[str, str]]) -> int:
    r = httpx.post(f"{url}/api/v1/runs", json=items, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return r.status_code


# ---------------------------------------------------------------------------------------------- SIGTERM


async def _pushers(url: str, workers: int, batch: int, accepted: set[str], started: asyncio.Event,
                   in_flight: list[int]) -> None:
    """Workers pushing batches of new runs until the exporter stops answering; `accepted` gets every run id
    of a request answered 200, `in_flight[0]` counts requests sent and not yet answered."""

    async def worker(n: int, client: httpx.AsyncClient) -> None:
        for i in range(10_000):
            ids = [f"run_w{n}_b{i}_{k}" for k in range(batch)]
            items = [{"id": run_id, "status": "in_progress", "thread_id": f"thread_w{n}"} for run_id in ids]
            in_flight[0] += 1
            try:
                r = await client.post("/api/v1/runs", json=items, headers={"Authorization": f"Bearer {TOKEN}"})
            except httpx.HTTPError:
                return  # the exporter closed the connection or stopped listening: no answer, no claim
            finally:
                in_flight[0] -= 1
            if r.status_code != 200:
                return
            assert r.json()["accepted"] == batch
            accepted.update(ids)
            if len(accepted) >= 20 * batch:
                started.set()

    limits = httpx.Limits(max_connections=workers)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        await asyncio.gather(*(worker(n, client) for n in range(workers)))


def test_sigterm_mid_push_exits_0_within_5s_and_every_200_is_in_the_state_file(tmp_path: Path) -> None:
    exporter = _push_exporter(tmp_path)
    exporter.wait_ready()
    accepted: set[str] = set()
    in_flight = [0]
    proc = exporter.proc
    assert proc is not None

    async def scenario() -> tuple[float, int]:
        started = asyncio.Event()
        pushing = asyncio.create_task(_pushers(exporter.url, 48, 10, accepted, started, in_flight))
        await asyncio.wait_for(started.wait(), 30)
        proc.send_signal(signal.SIGTERM)
        sent, pending = time.monotonic(), in_flight[0]  # exact: nothing else runs on this loop meanwhile
        await asyncio.wait_for(pushing, 30)
        return sent, pending

    sent, in_flight_at_signal = asyncio.run(scenario())
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    assert code == 0, _log(exporter)
    assert elapsed <= SHUTDOWN_BUDGET, f"exit took {elapsed:.1f}s"
    assert in_flight_at_signal > 0, "requests were in flight when SIGTERM came"
    stored = {run.id for run in Store(tmp_path / "state.db", ["assistant_id"]).load().runs}
    missing = accepted - stored
    assert not missing, f"{len(missing)} of {len(accepted)} runs answered 200 are not in the state file"
    assert "stopped" in _log(exporter)


# ---------------------------------------------------------------------------------------------- start-up line


def test_startup_line_says_what_is_watched_and_no_secret(tmp_path: Path) -> None:
    threads = tmp_path / "threads.txt"
    threads.write_text("thread_a\nthread_b\n")
    env = {"OPENAI_API_KEY": "sk-startup-line-secret-key"}
    exporter = ExporterProcess(["--source", "threads", "--source", "push", "--push-token-file",
                                str(_tokens(tmp_path)), "--threads-file", str(threads), "--thread", "thread_c",
                                "--api-base", "http://127.0.0.1:9/v1",
                                "--state-file", str(tmp_path / "state.db")], env, tmp_path / "exporter.log").start()
    try:
        def startup() -> str | None:
            assert exporter.proc is not None and exporter.proc.poll() is None, _log(exporter)
            return next((ln for ln in _log(exporter).splitlines() if "starting:" in ln), None)

        line = wait_until(startup, 30, what="the start-up line") or ""
    finally:
        exporter.stop()
    assert "sources threads,push" in line
    assert "api http://127.0.0.1:9/v1;" in line
    assert "1 threads from flags + 2 from" in line
    assert "push endpoints on (1 tokens)" in line
    assert f"listening on 127.0.0.1:{exporter.port}" in line
    assert "tls off, basic auth off" in line
    log = _log(exporter)
    for secret in (TOKEN, "sk-startup-line-secret-key"):
        assert secret not in log


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKEN + "\n")
    return path


# ---------------------------------------------------------------------------------------------- SIGHUP


def _hup_and_wait(exporter: ExporterProcess, what: str) -> None:
    """SIGHUP, then wait for the log line that says `what` was re-read (the reload is done when it shows)."""
    before = _log(exporter).count(f"SIGHUP: {what}")
    assert exporter.proc is not None
    exporter.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _log(exporter).count(f"SIGHUP: {what}") > before, 10, what=f"SIGHUP: {what}")


def test_sighup_rereads_the_push_token_file(tmp_path: Path) -> None:
    exporter = _push_exporter(tmp_path)
    try:
        exporter.wait_ready()
        run = [{"id": "run_1", "status": "queued"}]
        assert _push(exporter.url, TOKEN, run) == 200
        assert _push(exporter.url, NEW_TOKEN, run) == 401
        (tmp_path / "tokens").write_text(NEW_TOKEN + "\n")
        _hup_and_wait(exporter, "push token file")
        assert _push(exporter.url, NEW_TOKEN, run) == 200
        assert _push(exporter.url, TOKEN, run) == 401
        assert exporter.proc is not None and exporter.proc.poll() is None  # reloaded, not restarted
    finally:
        assert exporter.stop() == 0


def test_sighup_rereads_the_web_config(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('old-password')}'\n")
    exporter = _push_exporter(tmp_path, "--web-config-file", str(web))

    def status(password: str) -> int:
        r = httpx.get(exporter.url + "/metrics", auth=("prometheus", password), timeout=10)
        return r.status_code

    try:
        wait_until(lambda: exporter.get("/healthz") is not None, 30, what="listening")
        assert status("old-password") == 200
        assert status("new-password") == 401
        web.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('new-password')}'\n")
        _hup_and_wait(exporter, "web config")
        assert status("new-password") == 200
        assert status("old-password") == 401
        web.write_text("basic_auth_users: [\n")  # broken: logged, and the users in force stay
        exporter.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: "not valid YAML" in _log(exporter), 10, what="the error logged")
        assert status("new-password") == 200
    finally:
        assert exporter.stop() == 0


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(scenario="steady", seed=7, speed=20)


def test_sighup_rereads_the_threads_file(tmp_path: Path, sim: Simulator) -> None:
    first, second, third = sim.thread_ids()[:3]
    assert len(third) <= 40
    threads = tmp_path / "threads.txt"
    # The rewrite below keeps size, mtime and inode, so only the SIGHUP (not the periodic check) can see it.
    threads.write_text(f"#{'-' * (len(third) - 1)}\n{first}\n{second}\n")
    exporter = ExporterProcess(["--api-base", sim.base_url, "--threads-file", str(threads), "--state-file",
                                str(tmp_path / "state.db"), "--poll-interval", "0.2", "--idle-poll-interval", "0.5",
                                "--max-requests-per-second", "500"], {"OPENAI_API_KEY": "sk-test-lifecycle"},
                               tmp_path / "exporter.log").start()
    try:
        exporter.wait_ready()
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads") == 2, 30, what="2 threads")
        stat = threads.stat()
        with threads.open("r+") as fh:  # in place: same inode
            fh.write(f"{third}\n{first}\n{second}\n")
        os.utime(threads, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert threads.stat().st_size == stat.st_size and threads.stat().st_ino == stat.st_ino
        _hup_and_wait(exporter, "threads file")
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads") == 3, 30, what="3 threads")
        assert "SIGHUP: threads file" in _log(exporter) and ": 3 threads" in _log(exporter)
    finally:
        assert exporter.stop() == 0
