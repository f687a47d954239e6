"""The poll loop: schedules threads, feeds the tracker, commits the store, refreshes the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from exporter.logs import RateLimiter
from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.sources import PollResult, StopRule
from exporter.sources.assistants import AssistantsSource
from exporter.store import Store
from exporter.tracker import Tracker

log = logging.getLogger(__name__)

REQUESTS = "assistants_exporter_api_requests_total"
INVALID = "assistants_exporter_invalid_objects_total"
POLL_DURATION = "assistants_exporter_poll_duration_seconds"

THREADS_FILE_CHECK = 1.0  # seconds; the contract is "picked up within 2 s"
MAX_BACKOFF = 300.0
INVALID_LOG_INTERVAL = 60.0
PUBLISH_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Schedule:
    poll_interval: float
    idle_poll_interval: float
    gone_poll_interval: float = 900.0

    @property
    def tick(self) -> float:
        return min(0.25, self.poll_interval / 2)


@dataclass(slots=True)
class ThreadSlot:
    due: float = 0.0  # monotonic
    failures: int = 0
    task: asyncio.Task[PollResult] | None = None


@dataclass(slots=True)
class Health:
    last_tick: float = field(default_factory=time.monotonic)
    polls_applied: int = 0
    reached_api: bool = False  # since this process started
    started: bool = False


class ThreadsFileWatcher:
    """Re-reads a threads file when it changes; keeps the last good list when it cannot be read."""

    def __init__(self, path: Path, reader: Callable[[Path], Collection[str]]) -> None:
        self.path = path
        self._reader = reader
        self._stamp: tuple[int, int, int] | None = None
        self.threads: tuple[str, ...] = ()

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return False
            threads = tuple(self._reader(self.path))
        except OSError as exc:
            log.warning("cannot read threads file %s: %s; keeping %d threads", self.path,
                        exc.strerror or exc, len(self.threads))
            return False
        self._stamp = stamp
        if threads == self.threads:
            return False
        self.threads = threads
        return True


class Daemon:
    def __init__(
        self,
        *,
        source: AssistantsSource,
        tracker: Tracker,
        store: Store,
        collector: SnapshotCollector,
        schedule: Schedule,
        static_threads: Collection[str] = (),
        threads_file: ThreadsFileWatcher | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.tracker = tracker
        self.store = store
        self.collector = collector
        self.schedule = schedule
        self.static_threads = tuple(static_threads)
        self.threads_file = threads_file
        self.wall = wall
        self.mono = mono
        self.state = ExporterState()
        self.health = Health()
        self.slots: dict[str, ThreadSlot] = {}
        self._rng = random.Random()
        self._next_file_check = 0.0
        self._invalid_log = RateLimiter(INVALID_LOG_INTERVAL)
        self._published_at = float("-inf")

    # -- hooks from the source ------------------------------------------------------------

    def on_request(self, endpoint: str, code: str) -> None:
        self.tracker.aggregates.inc(REQUESTS, (endpoint, code))

    def on_rate_limit_remaining(self, remaining: int) -> None:
        self.state.rate_limit_remaining = float(remaining)

    # -- watch list -----------------------------------------------------------------------

    def wanted_threads(self) -> list[str]:
        extra = self.threads_file.threads if self.threads_file else ()
        return list(dict.fromkeys((*self.static_threads, *extra)))

    def sync_threads(self) -> None:
        wanted = self.wanted_threads()
        for tid in wanted:
            if tid not in self.slots:
                self.tracker.watch(tid)
                self.slots[tid] = ThreadSlot(due=self.mono())
        keep = set(wanted)
        for tid in [t for t in self.slots if t not in keep]:
            slot = self.slots.pop(tid)
            if slot.task is not None:
                slot.task.cancel()
        for tid in [t for t in self.tracker.threads if t not in self.slots]:
            self.tracker.unwatch(tid)

    def _check_threads_file(self) -> None:
        now = self.mono()
        if self.threads_file is None or now < self._next_file_check:
            return
        self._next_file_check = now + THREADS_FILE_CHECK
        if self.threads_file.changed():
            log.info("threads file %s: %d threads", self.threads_file.path, len(self.threads_file.threads))
            self.sync_threads()

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.threads_file is not None:
            self.threads_file.changed()
        self.sync_threads()
        self.publish()
        self.health.started = True
        try:
            while not stop.is_set():
                self.health.last_tick = self.mono()
                self._check_threads_file()
                self._launch_due()
                await self._wait(stop)
                self._apply_finished()
        finally:
            await self._shutdown()

    def _launch_due(self) -> None:
        now = self.mono()
        for tid, slot in self.slots.items():
            if slot.task is None and slot.due <= now:
                stop_rule = self._stop_rule(tid)
                slot.task = asyncio.create_task(self.source.poll_thread(tid, stop_rule), name=f"poll:{tid}")

    def _stop_rule(self, thread_id: str) -> StopRule:
        return lambda seen: self.tracker.should_stop(thread_id, seen)

    async def _wait(self, stop: asyncio.Event) -> None:
        now = self.mono()
        idle_due = [s.due for s in self.slots.values() if s.task is None]
        timeout = self.schedule.tick
        if idle_due:
            timeout = max(0.0, min(timeout, min(idle_due) - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(timeout, 0.01))

    def _apply_finished(self) -> None:
        results: list[PollResult] = []
        for slot in self.slots.values():
            if slot.task is not None and slot.task.done():
                task, slot.task = slot.task, None
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:  # a source bug must not kill the loop
                    log.error("poll task failed: %r", exc)
                    slot.due = self.mono() + self.schedule.poll_interval
                    continue
                results.append(task.result())
        now = self.wall()
        for result in results:
            self._apply(result, now)
        self.tracker.expire(now)
        if results or self.tracker.changes or self.tracker.aggregates.dirty:
            self.commit()
        # Ages and windowed ratios move with time alone: refresh at least once a second.
        if results or self.mono() - self._published_at >= PUBLISH_INTERVAL:
            self.publish()

    def _apply(self, result: PollResult, now: float) -> None:
        tracker = self.tracker
        if result.outcome == "gone":
            tracker.mark_gone(result.thread_id)
        else:
            tracker.observe(result.thread_id, result.runs, now, complete=result.complete,
                            ok=result.outcome == "ok")
        for reason, count in result.invalid.items():
            tracker.aggregates.inc(INVALID, (reason,), count)
            self._log_invalid(reason, result.thread_id, now)
        tracker.aggregates.observe(POLL_DURATION, (), result.duration)
        self.state.api_up = 1.0 if result.api_reached else 0.0
        if result.api_reached:
            self.state.last_poll_success = now
            self.health.reached_api = True
        if result.error:
            log.warning("poll of thread %s failed: %s", result.thread_id, result.error)
        self.health.polls_applied += 1
        self._reschedule(result)

    def _reschedule(self, result: PollResult) -> None:
        slot = self.slots.get(result.thread_id)
        if slot is None:
            return
        sched = self.schedule
        if result.outcome == "error":
            slot.failures += 1
            base = min(MAX_BACKOFF, sched.poll_interval * 2 ** min(slot.failures, 16))
            delay = base * (0.5 + self._rng.random() / 2)
        else:
            slot.failures = 0
            if result.outcome == "gone":
                delay = sched.gone_poll_interval
            elif self.tracker.is_active(result.thread_id):
                delay = sched.poll_interval
            else:
                delay = sched.idle_poll_interval
        slot.due = result.started + delay

    def _log_invalid(self, reason: str, thread_id: str, now: float) -> None:
        if self._invalid_log.allow(reason, now):
            log.warning("skipped malformed data from thread %s: %s (logged once a minute per reason)",
                        thread_id, reason)

    def commit(self) -> None:
        changes = self.tracker.take_changes()
        counters, histograms = self.tracker.aggregates.take_dirty()
        meta = {"last_poll_success": repr(self.state.last_poll_success)}
        self.store.commit(changes, counters, histograms, meta)

    def publish(self) -> None:
        self.collector.update(build_families(self.tracker, self.state, self.wall()))
        self._published_at = self.mono()

    async def _shutdown(self) -> None:
        tasks = [s.task for s in self.slots.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.commit()
        await self.source.aclose()

    # -- probes ---------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        age = self.mono() - self.health.last_tick
        limit = max(30.0, 3 * self.schedule.poll_interval)
        return (age < limit, "ok" if age < limit else f"poll loop stalled for {age:.0f}s")

    def ready(self) -> tuple[bool, str]:
        if not self.health.started:
            return False, "starting"
        if not self.slots:
            return True, "ok (no threads to watch)"
        if self.health.reached_api:
            return True, "ok"
        return False, "waiting for the first poll that reaches the API"
