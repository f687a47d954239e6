"""Seeded workload scenarios. Every duration here is at speed 1; the engine divides them by `speed`."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.simulator.faults import Faults

OUTCOMES: tuple[str, ...] = ("completed", "failed", "incomplete", "cancelled", "expired")


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Relative weights of how runs end."""

    completed: float
    failed: float
    incomplete: float = 0.0
    cancelled: float = 0.0
    expired: float = 0.0

    def weights(self) -> list[float]:
        return [self.completed, self.failed, self.incomplete, self.cancelled, self.expired]


@dataclass(frozen=True, slots=True)
class Phase:
    duration: float | None  # seconds at speed 1; None = until the end of time
    arrival_rate: float  # new runs per second at speed 1, across all the scenario's threads
    outcomes: Outcomes


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    phases: tuple[Phase, ...]
    cycle: bool = False  # restart the phases after the last one (which then needs a duration)
    threads: int = 6
    assistants: tuple[tuple[str, str], ...] = (
        ("asst_support", "gpt-4o"),
        ("asst_research", "gpt-4.1"),
        ("asst_triage", "gpt-4o-mini"),
    )
    queue_mean: float = 1.5  # mean queued seconds when capacity is unlimited
    work_mean: float = 6.0  # mean length of one in_progress stint
    tool_pause_mean: float = 4.0  # mean requires_action seconds before the client submits outputs
    tool_call_probability: float = 0.35  # chance of each further function-call pause in a run
    workers: int | None = None  # finite capacity: runs queue until one of this many workers is free
    history_threads: int = 0  # how many threads are seeded with old terminal runs
    history_runs: int = 0  # old runs per such thread
    history_span: float = 0.0  # the old runs were created over this many seconds before the start
    # Chance that an arrival opens a new thread (conversations start all the time; discovery must find them).
    # Arrivals go to the `threads` most recent threads, so older ones fall idle.
    new_thread_probability: float = 0.0
    # incomplete_details.reason of incomplete runs, with relative weights.
    incomplete_reasons: tuple[tuple[str, float], ...] = (("max_completion_tokens", 0.8), ("max_prompt_tokens", 0.2))
    faults: Faults = field(default_factory=Faults)  # default fault knobs (copied per Simulator)


_STEADY = Outcomes(completed=0.85, failed=0.05, incomplete=0.03, cancelled=0.03, expired=0.04)
_CALM = Outcomes(completed=0.88, failed=0.02, incomplete=0.03, cancelled=0.03, expired=0.04)
_SPIKE = Outcomes(completed=0.60, failed=0.30, incomplete=0.03, cancelled=0.03, expired=0.04)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="steady",
            description="a realistic mix: ~85% completed, 5% failed, 3% incomplete, 3% cancelled, 4% expired",
            phases=(Phase(None, 0.5, _STEADY),),
        ),
        Scenario(
            name="failure-spike",
            description="2% failures for 5 min, then 30% for 10 min, then back to 2%",
            phases=(Phase(300.0, 0.5, _CALM), Phase(600.0, 0.5, _SPIKE), Phase(None, 0.5, _CALM)),
        ),
        Scenario(
            name="expiry",
            description="most runs wait for tool outputs that never come and expire after 10 min",
            phases=(Phase(None, 0.2, Outcomes(completed=0.25, failed=0.0, expired=0.75)),),
            tool_call_probability=0.0,
        ),
        Scenario(
            name="backlog",
            description="3 workers; arrivals exceed service for 5 min so the queue grows, then it drains",
            phases=(
                Phase(300.0, 0.45, Outcomes(completed=0.95, failed=0.03, cancelled=0.02)),
                Phase(600.0, 0.1, Outcomes(completed=0.95, failed=0.03, cancelled=0.02)),
            ),
            cycle=True,
            workers=3,
            work_mean=8.0,
            tool_call_probability=0.2,
            tool_pause_mean=2.0,
        ),
        Scenario(
            name="history",
            description="3 threads with 1500 old terminal runs each, plus a light live workload",
            phases=(Phase(None, 0.1, _STEADY),),
            threads=3,
            history_threads=3,
            history_runs=1500,
            history_span=7 * 86_400.0,
        ),
        Scenario(
            name="discovery",
            description="new threads open all the time (1 arrival in 5 starts one), the 3 newest get the runs; "
            "some incomplete runs are stopped by the content filter",
            phases=(Phase(None, 0.5, _STEADY),),
            threads=3,
            new_thread_probability=0.2,
            # Foundry's content filter also ends runs as incomplete.
            incomplete_reasons=(("max_completion_tokens", 0.6), ("max_prompt_tokens", 0.2), ("content_filter", 0.2)),
        ),
    )
}
