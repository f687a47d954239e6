"""When each watched scope is polled next: active scopes every poll interval, idle ones every idle interval,
failing ones with backoff. Pure bookkeeping on a monotonic clock; the daemon starts and reaps the tasks.

Freshness: due active scopes go before due idle ones, and no more polls are started than can run at once,
so a burst of idle polls cannot queue ahead of an active scope. Each scope's first idle interval is drawn at
random, which spreads the phases of scopes added together (at start-up) instead of keeping them in step.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exporter.sources import FetchResult, Outcome, PollResult

MAX_BACKOFF = 300.0


@dataclass(frozen=True, slots=True)
class Schedule:
    poll_interval: float
    idle_poll_interval: float
    gone_poll_interval: float = 900.0
    max_in_flight: int = 8

    @property
    def tick(self) -> float:
        return min(0.25, self.poll_interval / 2)


@dataclass(slots=True)
class Slot:
    source: str
    due: float = 0.0  # monotonic
    failures: int = 0
    polls: int = 0
    task: asyncio.Task[PollResult] | asyncio.Task[FetchResult] | None = None


class Scheduler:
    def __init__(self, schedule: Schedule, mono: Callable[[], float], rng: random.Random | None = None) -> None:
        self.schedule = schedule
        self.mono = mono
        self.slots: dict[str, Slot] = {}
        self._rng = rng if rng is not None else random.Random()

    def sync(self, wanted: dict[str, str]) -> tuple[list[str], list[Slot]]:
        """Make the slots match `wanted` (scope -> source): (added scopes, removed slots)."""
        now = self.mono()
        added = [scope for scope in wanted if scope not in self.slots]
        for scope in added:
            self.slots[scope] = Slot(wanted[scope], due=now)
        removed = [self.slots.pop(scope) for scope in [s for s in self.slots if s not in wanted]]
        return added, removed

    def in_flight(self) -> int:
        return sum(1 for s in self.slots.values() if s.task is not None)

    def due(self, is_active: Callable[[str], bool]) -> list[str]:
        """Scopes to start polling now: active before idle, oldest due first, within max_in_flight."""
        now = self.mono()
        room = self.schedule.max_in_flight - self.in_flight()
        if room <= 0:
            return []
        ready = [(not is_active(scope), slot.due, scope) for scope, slot in self.slots.items()
                 if slot.task is None and slot.due <= now]
        ready.sort()
        return [scope for _, _, scope in ready[:room]]

    def next_wake(self) -> float:
        """Seconds until something may be due (bounded by the tick)."""
        waiting = [s.due for s in self.slots.values() if s.task is None]
        timeout = self.schedule.tick
        if waiting and self.in_flight() < self.schedule.max_in_flight:
            timeout = min(timeout, min(waiting) - self.mono())
        return max(timeout, 0.0)

    def finished(self, result: PollResult, active: bool) -> None:
        slot = self.slots.get(result.scope)
        if slot is None:
            return
        slot.polls += 1
        slot.due = result.started + self._delay(slot, result.outcome, active)

    def fetched(self, result: FetchResult) -> None:
        """A by-id fetch ended: the run is unfinished (finished ones leave), so it is due a poll interval on."""
        slot = self.slots.get(result.run_id)
        if slot is None:
            return
        slot.polls += 1
        slot.due = self.mono() + self._delay(slot, result.outcome, True)

    def failed(self, scope: str) -> None:
        """The poll task itself raised (a bug): try again after a poll interval."""
        slot = self.slots.get(scope)
        if slot is not None:
            slot.due = self.mono() + self.schedule.poll_interval

    def _delay(self, slot: Slot, outcome: Outcome, active: bool) -> float:
        sched = self.schedule
        if outcome == "error":
            slot.failures += 1
            base = min(MAX_BACKOFF, sched.poll_interval * 2.0 ** min(slot.failures, 16))
            return base * (0.5 + self._rng.random() / 2)
        slot.failures = 0
        if outcome == "gone":
            return sched.gone_poll_interval
        if active:
            return sched.poll_interval
        if slot.polls == 1:  # spread the phase once; afterwards exactly one poll per idle interval
            return max(sched.poll_interval, sched.idle_poll_interval * (0.1 + 0.9 * self._rng.random()))
        return sched.idle_poll_interval

    def tasks(self) -> Iterable[asyncio.Task[PollResult] | asyncio.Task[FetchResult]]:
        return [s.task for s in self.slots.values() if s.task is not None]
