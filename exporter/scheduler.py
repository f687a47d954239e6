"""When each watched scope is polled next: active scopes every poll interval, idle ones every idle interval,
failing ones with backoff. Pure bookkeeping on a monotonic clock; the daemon starts and reaps the tasks.

Circuit breaker, one per source: *closed* (normal) until BREAKER_THRESHOLD polls of the source in a row fail
without reaching its API; then *open*: none of its scopes is polled, except one *probe* every probe delay
(the poll interval, doubling while the API stays away, up to PROBE_MAX). While the probe is in flight the
breaker is *half-open*. A probe that reaches the API closes it, and every scope of the source that was backed
off is due at once, so the whole source recovers within one poll interval of the probe instead of each
scope waiting out its own backoff. A probe that fails opens it again.

Freshness: due active scopes go before due idle ones, and no more polls are started than can run at once,
so a burst of idle polls cannot queue ahead of an active scope. Each scope's first idle interval is drawn at
random, which spreads the phases of scopes added together (at start-up) instead of keeping them in step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from exporter.sources import FetchResult, Outcome, PollResult

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0
BREAKER_THRESHOLD = 3  # polls in a row that reached nothing (each already retried its requests)
PROBE_MAX = 10.0  # seconds between probes at most (or the poll interval, if longer): recovery is seen that fast

BreakerState = Literal["closed", "open", "half_open"]


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
    again: bool = False  # told to poll at once while a poll was in flight: due again when it ends
    owed: bool = False  # told to poll at once: polled even while its live stream is up
    task: asyncio.Task[PollResult] | asyncio.Task[FetchResult] | None = None


@dataclass(slots=True)
class Breaker:
    state: BreakerState = "closed"
    failures: int = 0  # polls in a row that did not reach the API, while closed
    probe_delay: float = 0.0
    probe_at: float = 0.0  # monotonic; when open: when the next probe may start
    probe: str | None = None  # half-open: the scope being polled as the probe


class Scheduler:
    def __init__(self, schedule: Schedule, mono: Callable[[], float], rng: random.Random | None = None) -> None:
        self.schedule = schedule
        self.mono = mono
        self.slots: dict[str, Slot] = {}
        self.breakers: dict[str, Breaker] = {}  # by source
        # Scopes whose live event stream is up: not polled on the schedule, only when a poll is owed (hurry).
        self.streamed: set[str] = set()
        self._rng = rng if rng is not None else random.Random()

    def breaker(self, source: str) -> Breaker:
        return self.breakers.setdefault(source, Breaker())

    def sync(self, wanted: dict[str, str]) -> tuple[list[str], list[Slot]]:
        """Make the slots match `wanted` (scope -> source): (added scopes, removed slots)."""
        now = self.mono()
        added = [scope for scope in wanted if scope not in self.slots]
        for scope in added:
            self.slots[scope] = Slot(wanted[scope], due=now)
        removed_scopes = [s for s in self.slots if s not in wanted]
        removed = [self.slots.pop(scope) for scope in removed_scopes]
        self.streamed.difference_update(removed_scopes)
        for breaker in self.breakers.values():
            if breaker.probe in removed_scopes:  # the probe will never report: probe again with another scope
                breaker.state, breaker.probe, breaker.probe_at = "open", None, now
        return added, removed

    def in_flight(self) -> int:
        return sum(1 for s in self.slots.values() if s.task is not None)

    def due(self, is_active: Callable[[str], bool]) -> list[str]:
        """Scopes to start polling now: active before idle, oldest due first, within max_in_flight."""
        now = self.mono()
        room = self.schedule.max_in_flight - self.in_flight()
        if room <= 0:
            return []
        streamed = self.streamed
        ready = [(not is_active(scope), slot.due, scope) for scope, slot in self.slots.items()
                 if slot.task is None and slot.due <= now and self.breaker(slot.source).state == "closed"
                 and (slot.owed or scope not in streamed)]
        ready.sort()
        picked = [scope for _, _, scope in ready[:room]]
        for scope in picked:
            self.slots[scope].owed = False
        return picked + self._probes(now, room - len(picked))

    def _probes(self, now: float, room: int) -> list[str]:
        """For each open breaker whose probe time has come, the scope to probe with: the one due first,
        whatever its own backoff says."""
        probes: list[str] = []
        for source, breaker in self.breakers.items():
            if room <= len(probes):
                break
            if breaker.state != "open" or now < breaker.probe_at:
                continue
            waiting = [(slot.due, scope) for scope, slot in self.slots.items()
                       if slot.source == source and slot.task is None]
            if waiting:
                breaker.state, breaker.probe = "half_open", min(waiting)[1]
                probes.append(breaker.probe)
        return probes

    def next_wake(self) -> float:
        """Seconds until something may be due (bounded by the tick)."""
        waiting = []
        for scope, slot in self.slots.items():
            breaker = self.breaker(slot.source)
            if scope in self.streamed and not slot.owed:
                continue
            if slot.task is None and breaker.state != "half_open":
                waiting.append(slot.due if breaker.state == "closed" else breaker.probe_at)
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
        if slot.again:
            slot.again, slot.owed = False, True
            if result.outcome == "ok":
                slot.due = min(slot.due, self.mono())
        if result.outcome == "error" and result.scope in self.streamed:
            slot.owed = True  # a listing a stream relies on failed: it is still owed, after the backoff
        if result.api_reached:
            self._reached(slot.source)
        elif result.outcome == "error":
            self._unreached(slot.source, result.scope)

    def fetched(self, result: FetchResult) -> None:
        """A by-id fetch ended: the run is unfinished (finished ones leave), so it is due a poll interval on."""
        slot = self.slots.get(result.run_id)
        if slot is None:
            return
        slot.polls += 1
        slot.due = self.mono() + self._delay(slot, result.outcome, True)

    def hurry(self, scope: str) -> None:
        """Something happened in this scope (a webhook or its stream said so): poll it now, or again as soon as
        the poll in flight ends (it may have read the scope before the change). The poll is owed even while
        the scope is streamed; a backed-off scope keeps its backoff (the API is failing) but is still owed."""
        slot = self.slots.get(scope)
        if slot is None:
            return
        if slot.task is not None:
            slot.again = True
            return
        slot.owed = True
        if not slot.failures:
            slot.due = min(slot.due, self.mono())

    def covered(self, scope: str) -> None:
        """Everything in this scope until now is known (its live stream said so): next poll an idle interval
        on, unless one is owed."""
        slot = self.slots.get(scope)
        if slot is not None and not slot.owed and slot.task is None and not slot.failures:
            slot.due = self.mono() + self.schedule.idle_poll_interval

    def failed(self, scope: str) -> None:
        """The poll task itself raised (a bug): try again after a poll interval."""
        slot = self.slots.get(scope)
        if slot is not None:
            slot.due = self.mono() + self.schedule.poll_interval
            self._unreached(slot.source, scope)

    def _reached(self, source: str) -> None:
        breaker = self.breaker(source)
        breaker.failures = 0
        if breaker.state == "closed":
            return
        now = self.mono()
        released = 0
        for slot in self.slots.values():
            if slot.source == source and slot.failures and slot.task is None:
                slot.failures, slot.due = 0, min(slot.due, now)
                released += 1
        breaker.state, breaker.probe, breaker.probe_delay = "closed", None, 0.0
        log.info("%s: the API answers again; polling resumes (%d backed-off scopes due now)", source, released)

    def _unreached(self, source: str, scope: str) -> None:
        breaker = self.breaker(source)
        if breaker.state == "closed":
            breaker.failures += 1
            if breaker.failures < BREAKER_THRESHOLD:
                return
            breaker.probe_delay = self.schedule.poll_interval
            log.warning("%s: %d polls in a row did not reach the API; polling paused, probing with one scope "
                        "at a time", source, breaker.failures)
        elif breaker.state == "half_open" and scope == breaker.probe:
            breaker.probe_delay = min(max(PROBE_MAX, self.schedule.poll_interval), breaker.probe_delay * 2)
        else:
            return  # open: a poll started before it opened; it changes nothing
        breaker.state, breaker.probe, breaker.probe_at = "open", None, self.mono() + breaker.probe_delay

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
