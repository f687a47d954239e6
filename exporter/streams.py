"""Live session streams, held by the daemon for the most recently active sessions (sources/session_streams.py
reads one).

- Which: sessions with an unfinished turn, most recently active first (the latest status change of their
  unfinished turns), at most `--session-streams`; the rest are polled as before. Re-ranked every RANK_EVERY.
- While a stream is up its session is not polled on the schedule (Scheduler.streamed): each turn event is a
  single-run update, so statuses and ends are exact and arrive within a tick.
- A stream is live only (no resume cursor), so the session is listed once right after the stream opens
  (what happened before it opened) and once after it ends, however it ends (what happened while it was
  down); then it is reconnected after a backoff (RETRY_MIN doubling to RETRY_MAX, with jitter; back to
  RETRY_MIN after a stream that carried events and closed cleanly).
- A turn waiting for input has no turn event: the session's `agent.session.requires_action` on the stream
  lists the session once, and so does the `agent.session.in_progress` that ends the wait (and any
  `agent.session.failed`). `.idle` and an `.in_progress` that starts a turn list nothing: turn events say it.
- Each connection attempt counts in api_requests_total{source="sessions", endpoint="session_events"}; an
  open stream sets api_up{source="sessions"} to 1, a hang (quiet past --session-stream-keepalive) or an
  attempt that reached nothing sets it to 0.
- Items wait for the loop in a bounded queue (MAX_QUEUED); past it a session's items are dropped and the
  session is listed instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exporter.logs import RateLimiter
from exporter.runstate import Remembered
from exporter.scheduler import Scheduler
from exporter.selfmetrics import SelfMetrics
from exporter.sources.session_streams import StreamEnd, StreamItem, StreamReader
from exporter.tracker import Tracker

log = logging.getLogger(__name__)

RETRY_MIN = 0.5
RETRY_MAX = 30.0
RANK_EVERY = 0.5  # seconds between re-rankings of the active sessions
BOOST_FOR = 10.0  # seconds a session a webhook woke up ranks first, before its listing shows the turn
COVERED_FOR = 60.0  # seconds after a stream saw its session go idle during which `.idle` needs no listing
MAX_QUEUED = 100_000  # stream items waiting for the loop
LOG_INTERVAL = 60.0


@dataclass(slots=True)
class _Held:
    task: asyncio.Task[StreamEnd]


class StreamManager:
    def __init__(self, reader: StreamReader, limit: int, source: str, *, tracker: Tracker, scheduler: Scheduler,
                 metrics: SelfMetrics, recall: Callable[[Iterable[str]], Mapping[str, Remembered]],
                 wake: Callable[[], None], mono: Callable[[], float], rng: random.Random | None = None) -> None:
        self.reader = reader
        self.limit = limit
        self.source = source  # the listing source whose scopes are streamed
        self.tracker = tracker
        self.scheduler = scheduler
        self.metrics = metrics
        self.recall = recall
        self.wake = wake
        self.mono = mono
        self._rng = rng if rng is not None else random.Random()
        self.held: dict[str, _Held] = {}
        self.retry: dict[str, tuple[int, float]] = {}  # session -> (failures in a row, not before; monotonic)
        self._opened: list[str] = []
        self._items: list[StreamItem] = []
        self._overflowed: set[str] = set()
        self._waiting: set[str] = set()  # sessions whose stream said requires_action, not yet in_progress again
        self._boost: dict[str, float] = {}  # session -> when a webhook said it woke up (monotonic)
        self._closed_idle: dict[str, float] = {}  # session -> when its stream closed after it went idle
        self._next_rank = float("-inf")
        self._log = RateLimiter(LOG_INTERVAL)

    # -- which sessions are streamed ------------------------------------------------------------

    def sync(self) -> None:
        """Hold the streams of the most recently active sessions; close the others (every RANK_EVERY)."""
        now = self.mono()
        if now < self._next_rank:
            return
        self._next_rank = now + RANK_EVERY
        slots = self.scheduler.slots
        activity = self.tracker.last_activity()
        self._boost = {s: at for s, at in self._boost.items() if at > now - BOOST_FOR and s in slots}
        self._closed_idle = {s: at for s, at in self._closed_idle.items() if at > now - COVERED_FOR}
        boosted = sorted(self._boost, key=lambda s: self._boost[s], reverse=True)
        ranked = boosted + sorted((s for s in activity if s in slots and slots[s].source == self.source
                                   and s not in self._boost), key=lambda s: activity[s], reverse=True)
        wanted: list[str] = []
        for session in ranked:
            if len(wanted) >= self.limit:
                break
            if session in self.held or self.retry.get(session, (0, 0.0))[1] <= now:
                wanted.append(session)
        keep = set(wanted)
        for session in [s for s in boosted if s not in keep]:
            del self._boost[session]  # woken, but no stream for it (the limit, or a backoff): list it now
            self.scheduler.hurry(session)
        for session in [s for s in self.held if s not in keep]:
            self.held.pop(session).task.cancel()  # idle now, or displaced: polled again
            if session in self.scheduler.streamed and session not in activity:
                self.scheduler.covered(session)  # the stream said its turns ended: no listing needed now
                self._closed_idle[session] = now
            self.scheduler.streamed.discard(session)
        for session in wanted:
            if session not in self.held:
                self._open(session)
        for session in [s for s in self.retry if s not in activity]:
            del self.retry[session]  # idle sessions start afresh

    def on_webhook(self, session: str, event_type: str) -> bool:
        """A session webhook: True when its stream deals with it (no listing needed now). A session whose
        stream is up needs nothing; `.idle` or `.failed` right after its stream saw the turns end needs
        nothing; a session that wakes up gets its stream at once, and the listing that follows the opening."""
        now = self.mono()
        if session in self.scheduler.streamed:
            return True
        if event_type in ("agent.session.idle", "agent.session.failed"):
            return event_type == "agent.session.idle" and session in self._closed_idle
        if self.retry.get(session, (0, 0.0))[1] > now:
            return False  # backing off its stream: poll it
        self._boost[session] = now
        self._next_rank = float("-inf")
        self.wake()
        return True

    def _open(self, session: str) -> None:
        def on_item(item: StreamItem) -> None:
            if len(self._items) >= MAX_QUEUED:
                self._overflowed.add(item.session)
            else:
                self._items.append(item)
                self.wake()

        def on_open() -> None:
            self._opened.append(session)
            self.wake()

        task = asyncio.create_task(self.reader.follow(session, on_item, on_open), name=f"stream:{session}")
        task.add_done_callback(lambda _: self.wake())
        self.held[session] = _Held(task)

    # -- what the streams said ---------------------------------------------------------------------

    def apply(self, now: float) -> bool:
        """Apply what arrived since the last tick; True when anything did."""
        ends = self._reap()
        opened, self._opened = self._opened, []
        items, self._items = self._items, []
        overflowed, self._overflowed = self._overflowed, set()
        for session in opened:
            if session in self.held:
                self.scheduler.streamed.add(session)
                self.scheduler.hurry(session)  # what happened before the stream opened
                self.metrics.api_up(self.source, True)
        recalled = self.recall(item.snap.id for item in items if item.snap is not None)
        for item in items:
            if item.invalid is not None:
                self.metrics.invalid(item.invalid)
            if item.snap is not None:
                self.tracker.observe_run(item.snap, now, recalled)
            if item.event is not None:
                self._session_event(item.session, item.event)
        for session in overflowed:
            self.scheduler.hurry(session)
        for end in ends:
            self._ended(end)
        return bool(ends or opened or items or overflowed)

    def _session_event(self, session: str, event: str) -> None:
        """List the session once where no turn event tells what changed: a wait for input, its end, a failure."""
        if event == "agent.session.requires_action":
            self._waiting.add(session)
        elif event == "agent.session.in_progress" and session in self._waiting:
            self._waiting.discard(session)
        elif event != "agent.session.failed":
            self._waiting.discard(session)
            return
        self.scheduler.hurry(session)

    def _reap(self) -> list[StreamEnd]:
        ends: list[StreamEnd] = []
        for session, held in list(self.held.items()):
            if not held.task.done():
                continue
            del self.held[session]
            if held.task.cancelled():
                continue
            exc = held.task.exception()
            if exc is not None:  # a bug must not kill the loop
                log.error("stream of %s failed: %r", session, exc)
                ends.append(StreamEnd(session, "error", connected=False, reached=False))
            else:
                ends.append(held.task.result())
        return ends

    def _ended(self, end: StreamEnd) -> None:
        """List the session once (what happened while the stream was down), then reconnect after a backoff."""
        self.scheduler.streamed.discard(end.session)
        self.scheduler.hurry(end.session)
        self._waiting.discard(end.session)
        clean = end.reason == "closed" and end.events > 0
        failures = 0 if clean else self.retry.get(end.session, (0, 0.0))[0] + 1
        delay = min(RETRY_MAX, RETRY_MIN * 2.0 ** min(failures, 16)) * (0.5 + self._rng.random() / 2)
        self.retry[end.session] = (failures, self.mono() + delay)
        if end.reason == "hang" or not end.reached:
            self.metrics.api_up(self.source, False)
        if end.reason not in ("closed", "gone") and self._log.allow(end.reason, self.mono()):
            log.warning("session stream of %s ended: %s; listing it, reconnecting in %.1fs (logged once a minute "
                        "per reason)", end.session, end.reason, delay)

    def streaming(self) -> int:
        return len(self.scheduler.streamed)

    async def aclose(self) -> None:
        tasks = [held.task for held in self.held.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.held.clear()
        await self.reader.aclose()
