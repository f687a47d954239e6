"""Clocks the simulator reads time from: the wall clock, or a fake one tests move by hand."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""
        ...


class WallClock:
    """The real clock (the default)."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to, so a test decides exactly what the engine sees."""

    def __init__(self, start: float = 1_760_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()  # HTTP handler threads read it while the test moves it

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        # Setting an earlier time is allowed; the engine simply ignores time going backwards.
        with self._lock:
            self._t = float(t)
