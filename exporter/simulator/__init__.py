"""An Assistants-v2-compatible runs API on loopback, for the demo and the tests (docs/simulator.md)."""

from exporter.simulator.clock import Clock, FakeClock, WallClock
from exporter.simulator.engine import Engine, Truth
from exporter.simulator.faults import Faults
from exporter.simulator.scenarios import SCENARIOS, Outcomes, Phase, Scenario
from exporter.simulator.server import Simulator
from exporter.simulator.wire import ApiError

__all__ = [
    "SCENARIOS",
    "ApiError",
    "Clock",
    "Engine",
    "FakeClock",
    "Faults",
    "Outcomes",
    "Phase",
    "Scenario",
    "Simulator",
    "Truth",
    "WallClock",
]
