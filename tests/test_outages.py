"""The real daemon, as a subprocess, through an API outage: a hang, then refused connections, then back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess, total
from tests.helpers import wait_until
from tests.outage_proxy import OutageProxy

pytestmark = pytest.mark.slow

POLL = 1.0


@pytest.fixture
def proxied() -> Iterator[tuple[Simulator, OutageProxy]]:
    sim = Simulator(scenario="steady", seed=11, speed=40).start()
    sim.engine.set_workload(False)
    proxy = OutageProxy(sim.port).start()
    yield sim, proxy
    proxy.stop()
    sim.stop()


def _api_up(exporter: ExporterProcess) -> float:
    return total(exporter.scrape(), "assistants_exporter_api_up", source="threads")


def test_api_up_follows_a_hang_and_every_thread_returns_within_a_poll_interval_of_the_probe(
        proxied: tuple[Simulator, OutageProxy], tmp_path: Path) -> None:
    sim, proxy = proxied
    threads = sim.thread_ids()
    (tmp_path / "threads.txt").write_text("\n".join(threads) + "\n")
    exporter = ExporterProcess(
        ["--api-base", proxy.url + "/v1", "--threads-file", str(tmp_path / "threads.txt"),
         "--state-file", str(tmp_path / "state.db"), "--poll-interval", str(POLL), "--idle-poll-interval", "2",
         "--max-requests-per-second", "500"],
        {"OPENAI_API_KEY": "sk-test-outage"}, tmp_path / "exporter.log").start()
    try:
        exporter.wait_ready()
        wait_until(lambda: _api_up(exporter) == 1, 10, 0.1, "api_up 1")

        proxy.hang()
        hung_at = time.monotonic()
        wait_until(lambda: _api_up(exporter) == 0, 20, 0.1, "api_up 0 during the hang")
        # Within max(poll interval, 10 s), plus the at most 1 s until the page is published.
        assert time.monotonic() - hung_at <= 11.0, exporter.logs()

        proxy.refuse()  # connections refused for 15 s: every thread fails and backs off on its own
        refused_at = time.monotonic()
        wait_until(lambda: "did not reach the API" in exporter.logs(), 20, 0.1, "the circuit to open")
        wait_until(lambda: time.monotonic() >= refused_at + 15, 20, 0.1, "the outage to last 15 s")
        assert _api_up(exporter) == 0

        proxy.restore()
        restored_at = time.monotonic()
        wait_until(lambda: _api_up(exporter) == 1, 40, 0.1, "api_up 1 after the outage")
        first = min(t for t, _ in proxy.forwarded if t >= restored_at)
        assert first - restored_at <= 11.0  # the probe delay is at most 10 s

        def every_thread_polled() -> bool:
            return {thread for t, thread in proxy.forwarded if t >= first} >= set(threads)
        wait_until(every_thread_polled, 10, 0.05, "every thread polled after the outage")
        last = max(min(t for t, thread in proxy.forwarded if t >= first and thread == want) for want in threads)
        # Every thread within one poll interval of the probe (plus a loop tick and scheduling slack).
        assert last - first <= POLL + 0.5, exporter.logs()
    finally:
        exporter.stop()
