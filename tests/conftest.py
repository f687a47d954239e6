"""Shared test fixtures, defined once and used by name: a fake clock, the simulator, the exporter as a subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess

# The epoch that FakeTime.wall() adds to its monotonic time: a plausible Unix time for run timestamps.
WALL0 = 1_800_000_000.0


class FakeTime:
    """A clock that moves only when the test moves it or someone sleeps; records every sleep.

    One clock for every caller's shape: `clock()` or the object itself as a time function, `monotonic()` and
    `wall()` (WALL0 later) for the daemon, and `mono` as another name for `now`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now

    @property
    def mono(self) -> float:
        return self.now

    @mono.setter
    def mono(self, value: float) -> None:
        self.now = value

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)  # a yield, so other tasks run as they would during a real sleep


class SimFactory(Protocol):
    def __call__(self, *, workload: bool = False, **kwargs: Any) -> Simulator: ...


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    """Start simulators with any of Simulator's arguments; each stops after the test. The scenario's own arrivals
    are paused unless `workload=True`, because most tests start them only once the exporter is ready."""
    started: list[Simulator] = []

    def make(*, workload: bool = False, **kwargs: Any) -> Simulator:
        sim = Simulator(**kwargs).start()
        started.append(sim)
        if not workload:
            sim.engine.set_workload(False)
        return sim

    yield make
    for sim in reversed(started):
        sim.stop()


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    """The common simulator: the steady scenario, seed 7, 40 times real speed, arrivals paused. A test file
    needing other arguments defines its own `sim` with make_sim."""
    return make_sim(scenario="steady", seed=7, speed=40)


class ExporterStarter(Protocol):
    def __call__(
        self, sim: Simulator, *flags: str, threads: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ExporterProcess: ...


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[ExporterStarter]:
    """Start the exporter as a subprocess against `sim`, with its state file and log in the test's tmp_path (so a
    second start resumes the first one's state), then `flags`. With `threads`, a threads file lists them. An
    exporter the test left running is stopped after it."""
    started: list[ExporterProcess] = []

    def start(
        sim: Simulator, *flags: str, threads: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ExporterProcess:
        args = ["--api-base", sim.base_url, "--state-file", str(tmp_path / "state.db")]
        if threads is not None:
            threads_file = tmp_path / "threads.txt"
            # Written only once: a restarted exporter reads the file as the test left it.
            if not threads_file.exists():
                threads_file.write_text("# watched threads\n" + "\n".join(threads) + "\n")
            args += ["--threads-file", str(threads_file)]
        process_env = {"OPENAI_API_KEY": "sk-test-integration", **(env or {})}
        process = ExporterProcess([*args, *flags], process_env, tmp_path / "exporter.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
