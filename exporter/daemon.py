"""The loop: starts due polls, drains finished polls and received updates into the tracker, commits the
store (once per tick, for everything that arrived), answers the receivers, and publishes the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client.metrics_core import Metric

from exporter import metrics_spec as m
from exporter.aggregates import Histogram, Key
from exporter.inbox import Delivery, Inbox, Pending, Registration, RunItems, fail, resolve
from exporter.logs import CountingRateLimiter, RateLimiter
from exporter.metrics import ExporterState, SnapshotCollector, families, snapshot
from exporter.model import REASON_THREADS_FILE_LINE, SOURCE_RESPONSES, RunSnapshot
from exporter.runstate import Changes, Remembered
from exporter.scheduler import Schedule, Scheduler
from exporter.sources import (
    ByIdSource,
    Discovery,
    DiscoveryResult,
    FetchResult,
    ListingSource,
    PollResult,
    StallAware,
    StopRule,
)
from exporter.sources.webhooks import DeliveryLog
from exporter.statuses import is_terminal
from exporter.store import Store
from exporter.tracker import Tracker
from exporter.watchlist import WatchList

log = logging.getLogger(__name__)

THREADS_FILE_CHECK = 1.0  # seconds; the contract is "picked up within 2 s"
INVALID_LOG_INTERVAL = 60.0
POLL_FAILURE_LOG_INTERVAL = 60.0  # per kind of failure, across threads
_ATTEMPTS = re.compile(r" after \d+ attempts?")
PUBLISH_INTERVAL = 1.0
# Building the families costs milliseconds; under a stream of pushes a tick comes every few milliseconds, so
# changes are published at most this often (a poll's result still reaches /metrics well within a second).
MIN_PUBLISH_GAP = 0.2
STORE_RETRY_MIN = 0.5  # seconds; a failed commit is retried with doubling delays up to the max
STORE_RETRY_MAX = 30.0
# A webhook event waits for the fetch of its response this many failed attempts, then counts on its own.
FETCH_ATTEMPTS_BEFORE_EVENT = 3


@dataclass(slots=True)
class Health:
    last_tick: float = field(default_factory=time.monotonic)
    polls_applied: int = 0
    reached_api: bool = False  # since this process started
    started: bool = False
    store_error: str | None = None  # why the last commit failed, until one succeeds


@dataclass(slots=True)
class _Uncommitted:
    """A tick's effects that the store refused; retried, merged with later ticks, until they are written."""

    changes: Changes
    counters: dict[Key, float]
    histograms: dict[Key, Histogram]
    registrations: dict[str, str | None]
    discovered: dict[str, tuple[str, int] | None]
    deliveries: dict[str, float | None]
    pending: dict[str, tuple[str, int] | None]

    def merge(self, newer: _Uncommitted) -> None:
        self.deliveries.update(newer.deliveries)
        self.pending.update(newer.pending)
        self.changes.merge(newer.changes)
        self.counters.update(newer.counters)
        self.histograms.update(newer.histograms)
        self.registrations.update(newer.registrations)
        self.discovered.update(newer.discovered)


def _describe(exc: Exception) -> str:
    """One printable line: an error about a value the store could not encode may carry a lone surrogate,
    which would break the log line and the /readyz body that show it."""
    text = str(exc) if isinstance(exc, (sqlite3.Error, OSError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.encode("utf-8", "backslashreplace").decode("utf-8").split())


class Daemon:
    def __init__(
        self,
        *,
        sources: Mapping[str, ListingSource],
        by_id: Mapping[str, ByIdSource] | None = None,
        tracker: Tracker,
        store: Store,
        collector: SnapshotCollector,
        schedule: Schedule,
        watchlist: WatchList | None = None,
        run_sources: Sequence[str] = (),
        inbox: Inbox | None = None,
        discoveries: Sequence[Discovery] = (),
        discover_interval: float = 60.0,
        discovered_since: Mapping[str, float] | None = None,
        deliveries: DeliveryLog | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = dict(sources)
        # By-id sources poll one run per slot (the slot's scope is the run id) until the run ends.
        self.by_id = dict(by_id or {})
        self.tracker = tracker
        self.store = store
        self.collector = collector
        self.schedule = schedule
        self.watchlist = watchlist if watchlist is not None else WatchList()
        # The `source` values to export at zero before any run arrives: every source that is on.
        self.run_sources = tuple(run_sources) or (*self.sources, *self.by_id)
        self.wall = wall
        self.mono = mono
        self.scheduler = Scheduler(schedule, mono)
        self.state = ExporterState()
        self.health = Health()
        self._wake = asyncio.Event()
        self.inbox = inbox if inbox is not None else Inbox()
        self.inbox.wake = self._wake.set
        self._next_file_check = 0.0
        self._invalid_log = RateLimiter(INVALID_LOG_INTERVAL)
        self._store_log = RateLimiter(INVALID_LOG_INTERVAL)
        self.poll_failure_log = CountingRateLimiter(POLL_FAILURE_LOG_INTERVAL)
        self._stall_log = RateLimiter(INVALID_LOG_INTERVAL)
        self._published_at = float("-inf")
        self._unpublished = False  # something changed since the last publish
        self._uncommitted: _Uncommitted | None = None
        self._store_retry_at = 0.0
        self._store_delay = STORE_RETRY_MIN
        self._answer: list[Pending] = []  # received items whose commit has not succeeded yet
        self.discoveries = tuple(discoveries)
        self.discover_interval = discover_interval
        self._next_discovery = float("-inf")
        self._discovering: list[tuple[Discovery, float, asyncio.Task[DiscoveryResult]]] = []
        # Per discovery: when its last finished pass started. A scope created after that is new (born watched).
        self.discovered_since: dict[str, float] = dict(discovered_since or {})
        self.deliveries = deliveries if deliveries is not None else DeliveryLog()
        self._publish_pending = False

    # -- hooks from the sources -----------------------------------------------------------

    def on_request(self, source: str, endpoint: str, code: str) -> None:
        self.tracker.aggregates.inc(m.API_REQUESTS.name, (source, endpoint, code))

    def on_rate_limit_remaining(self, remaining: int) -> None:
        self.state.rate_limit_remaining = float(remaining)

    def on_push_request(self, code: int) -> None:
        self.tracker.aggregates.inc(m.PUSH_REQUESTS.name, (str(code),))

    def on_webhook(self, event_type: str, outcome: str) -> None:
        self.tracker.aggregates.inc(m.WEBHOOKS.name, (event_type, outcome))

    # -- watch list -----------------------------------------------------------------------

    def sync_scopes(self) -> None:
        wanted = {scope: source for scope, source in self.watchlist.wanted().items()
                  if source in self.sources or source in self.by_id}
        added, removed = self.scheduler.sync(wanted)
        for scope in added:
            if wanted[scope] in self.sources:
                self.tracker.watch(scope)
        for slot in removed:
            if slot.task is not None:
                slot.task.cancel()
        for scope in [s for s in self.tracker.scopes if s not in self.scheduler.slots]:
            self.tracker.unwatch(scope)
        if added or removed:
            self._wake.set()

    def _check_threads_file(self) -> None:
        now = self.mono()
        threads_file = self.watchlist.threads_file
        if threads_file is None or now < self._next_file_check:
            return
        self._next_file_check = now + THREADS_FILE_CHECK
        changed = threads_file.changed()
        rejected = threads_file.take_rejected()
        if rejected:
            self.tracker.aggregates.inc(m.INVALID_OBJECTS.name, (REASON_THREADS_FILE_LINE,), rejected)
        if changed:
            log.info("threads file %s: %d threads", threads_file.path, len(threads_file.threads))
            self.sync_scopes()

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.watchlist.threads_file is not None:
            self.watchlist.threads_file.changed()
        self.sync_scopes()
        self.publish()
        self.health.started = True
        stopper = asyncio.create_task(stop.wait(), name="stop")
        stopper.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop.is_set():
                self.health.last_tick = self.mono()
                self.launch_due()
                await self._wait()
                self.step()
        finally:
            stopper.cancel()
            await self._shutdown()

    def launch_due(self) -> None:
        now = self.mono()
        if self.discoveries and not self._discovering and now >= self._next_discovery:
            self._next_discovery = now + self.discover_interval
            for discovery in self.discoveries:
                task = asyncio.create_task(discovery.discover(self._is_watched), name=f"discover:{discovery.name}")
                task.add_done_callback(lambda _: self._wake.set())
                self._discovering.append((discovery, self.wall(), task))
        for scope in self.scheduler.due(self._is_active):
            slot = self.scheduler.slots[scope]
            by_id = self.by_id.get(slot.source)
            if by_id is not None:
                slot.task = asyncio.create_task(by_id.fetch(scope), name=f"fetch:{scope}")
            else:
                slot.task = asyncio.create_task(self.sources[slot.source].poll(scope, self._stop_rule(scope)),
                                                name=f"poll:{scope}")
            slot.task.add_done_callback(lambda _: self._wake.set())

    def _is_active(self, scope: str) -> bool:
        """A by-id slot is an unfinished run: always active. A listing slot is active with unfinished runs."""
        slot = self.scheduler.slots.get(scope)
        return (slot is not None and slot.source in self.by_id) or self.tracker.is_active(scope)

    def _is_watched(self, scope: str) -> bool:
        """Known to discovery: watched here, owned by another shard (which watches it), or (a response that
        ended and left the watch list) still known to the tracker."""
        return (scope in self.watchlist.wanted() or not self.watchlist.owns(scope)
                or bool(self.tracker.known([scope], self._recall([scope]))))

    def _recall(self, run_ids: Iterable[str]) -> Mapping[str, Remembered]:
        """What the state file remembers of the ids the tracker does not hold: one query (per 900 ids),
        plus remembered runs of a commit that failed and waits for its retry."""
        unknown = self.tracker.unknown(run_ids)
        if not unknown:
            return {}
        try:
            found = self.store.recall(unknown)
        except sqlite3.Error as exc:  # unreadable now: answer from memory; the commit will say what is wrong
            self.tracker.aggregates.inc(m.STORE_ERRORS.name, ())
            if self._store_log.allow("recall", self.wall()):
                log.error("cannot read state file %s: %s (logged once a minute)", self.store.path, exc)
            found = {}
        if self._uncommitted is not None and self._uncommitted.changes.remembered:
            waiting = self._uncommitted.changes.remembered
            found.update((i, waiting[i]) for i in unknown if i in waiting)
        return found

    def _reap_discoveries(self, now: float) -> None:
        running = []
        for discovery, started, task in self._discovering:
            if not task.done():
                running.append((discovery, started, task))
            elif not task.cancelled():
                exc = task.exception()
                if exc is not None:  # a source bug must not kill the loop
                    log.error("discovery %s failed: %r", discovery.name, exc)
                else:
                    self._apply_discovery(discovery, started, task.result(), now)
        self._discovering = running

    def _apply_discovery(self, discovery: Discovery, started: float, result: DiscoveryResult, now: float) -> None:
        agg = self.tracker.aggregates
        since = self.discovered_since.get(discovery.name)
        # created_at is whole seconds: a scope created in the second a pass started may be missing from it.
        born_after = None if since is None else math.floor(since) - 1
        for scope, created_at in result.scopes:
            if self.watchlist.discover(scope, discovery.name, created_at):
                agg.inc(m.DISCOVERED_THREADS.name, ())
                if born_after is not None and created_at >= born_after:
                    self.tracker.watch(scope, born=created_at)
        if result.error is None:
            self.discovered_since[discovery.name] = started
        for reason, count in result.invalid.items():
            agg.inc(m.INVALID_OBJECTS.name, (reason,), count)
        self.state.api_up[discovery.name] = 1.0 if result.api_reached else 0.0
        if result.error:
            log.warning("%s discovery: %s", discovery.name, result.error)
        # A discovered scope that is idle and older than the lookback leaves the watch list.
        horizon = now - discovery.lookback
        for scope, (source, created_at) in list(self.watchlist.discovered.items()):
            if source == discovery.name and created_at < horizon and not self.tracker.is_active(scope):
                self.watchlist.undiscover(scope)
        self.sync_scopes()

    def _stop_rule(self, scope: str) -> StopRule:
        return lambda seen: self.tracker.should_stop(scope, seen, self._recall(s.id for s in seen))

    async def _wait(self) -> None:
        timeout = self.scheduler.next_wake()
        if self._uncommitted is not None:
            timeout = min(timeout, max(0.0, self._store_retry_at - self.mono()))
        if self._unpublished:
            timeout = min(timeout, max(0.0, self._published_at + MIN_PUBLISH_GAP - self.mono()))
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))
        self._wake.clear()

    def step(self) -> None:
        """Apply whatever finished or arrived, commit it, answer the receivers, publish."""
        self._check_threads_file()
        reaped = self._reap()
        results = [r for r in reaped if isinstance(r, PollResult)]
        fetches = [r for r in reaped if isinstance(r, FetchResult)]
        received = self.inbox.drain()
        now = self.wall()
        if self._discovering:
            self._reap_discoveries(now)
        for result in results:
            self._apply(result, now)
        if results:
            self._note_api(results)
        if fetches:
            self._apply_fetches(fetches, now)
        self._note_stalls()
        for pending in received:
            self._apply_received(pending, now)
        self.tracker.expire(now)
        dirty = self.tracker.changes or self.tracker.aggregates.dirty or self._uncommitted
        if (received or reaped or dirty) and self.commit():
            answered, self._answer = self._answer, []
            resolve(answered)
        self._unpublished = self._unpublished or bool(reaped or received)
        # Ages and windowed ratios move with time alone: refresh at least once a second; changes at most
        # every MIN_PUBLISH_GAP, and after the answers of this tick have gone out.
        since = self.mono() - self._published_at
        if (self._unpublished and since >= MIN_PUBLISH_GAP) or since >= PUBLISH_INTERVAL:
            if received:
                self._publish_soon()
            else:
                self.publish()

    def _publish_soon(self) -> None:
        """Publish after the answered requests have run: building the families takes milliseconds, and a
        receiver's answer (a webhook sender waits for it) should not wait for them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.publish()
            return
        if not self._publish_pending:
            self._publish_pending = True
            loop.call_soon(self._deferred_publish)

    def _deferred_publish(self) -> None:
        self._publish_pending = False
        self.publish()

    def _reap(self) -> list[PollResult | FetchResult]:
        results: list[PollResult | FetchResult] = []
        for scope, slot in self.scheduler.slots.items():
            if slot.task is not None and slot.task.done():
                task, slot.task = slot.task, None
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:  # a source bug must not kill the loop
                    log.error("poll task failed: %r", exc)
                    self.scheduler.failed(scope)
                    continue
                results.append(task.result())
        return results

    def _apply(self, result: PollResult, now: float) -> None:
        tracker = self.tracker
        if result.outcome == "gone":
            tracker.mark_gone(result.scope)
        else:
            tracker.observe_listing(result.scope, result.runs, now, complete=result.complete,
                                    ok=result.outcome == "ok", recalled=self._recall(s.id for s in result.runs))
        for reason, count in result.invalid.items():
            tracker.aggregates.inc(m.INVALID_OBJECTS.name, (reason,), count)
            self._log_invalid(reason, result.scope, now)
        tracker.aggregates.observe(m.POLL_DURATION.name, (), result.duration)
        if result.api_reached:
            self.state.last_poll_success = now
            self.health.reached_api = True
        if result.error:
            self._log_poll_failure(result.scope, result.error)
        self.health.polls_applied += 1
        self.scheduler.finished(result, tracker.is_active(result.scope))

    def _apply_fetches(self, fetches: list[FetchResult], now: float) -> None:
        """Single-run updates from by-id polls. A run that ended, or is gone (404), leaves the watch list."""
        reached: dict[str, bool] = {}
        released = False
        recalled = self._recall(r.run_id for r in fetches)
        for result in fetches:
            slot = self.scheduler.slots.get(result.run_id)
            if slot is not None:
                reached[slot.source] = reached.get(slot.source, False) or result.api_reached
            if result.invalid_reason is not None:
                self.tracker.aggregates.inc(m.INVALID_OBJECTS.name, (result.invalid_reason,))
                self._log_invalid(result.invalid_reason, result.run_id, now)
            if result.api_reached:
                self.state.last_poll_success = now
                self.health.reached_api = True
            slot_failures = slot.failures + (result.outcome == "error") if slot is not None else 0
            if result.outcome == "ok" and result.run is not None:
                self.tracker.observe_run(self._with_event_end(result.run), now, recalled)
            elif result.run_id in self.deliveries.pending and (
                    result.outcome == "gone" or slot_failures >= FETCH_ATTEMPTS_BEFORE_EVENT):
                held = self.deliveries.settle(result.run_id)  # the fetch failed: count from the event alone
                if held is not None:
                    self.tracker.vanish(result.run_id)
                    self.tracker.observe_run(held, now, recalled)
            elif result.outcome == "gone":
                self.tracker.vanish(result.run_id)
            known = self.tracker.known([result.run_id], recalled).get(result.run_id)
            if result.outcome == "gone" or (known is not None and is_terminal(known)):
                released = self.watchlist.release(result.run_id) or released
            elif result.error:
                log.warning("fetch of %s failed: %s", result.run_id, result.error)
            self.scheduler.fetched(result)
        for source, ok in reached.items():
            self.state.api_up[source] = 1.0 if ok else 0.0
        if released:
            self.sync_scopes()

    def _with_event_end(self, snap: RunSnapshot) -> RunSnapshot:
        """A fetched terminal response settles its held webhook event, whose created_at is its end time
        (a Response has an end time only when completed)."""
        if not snap.terminal:
            return snap
        held = self.deliveries.settle(snap.id)
        if held is None or snap.ended_at() is not None or held.status != snap.status:
            return snap
        return replace(snap, failed_at=held.failed_at, cancelled_at=held.cancelled_at,
                       completed_at=held.completed_at)

    def _apply_delivery(self, delivery: Delivery, now: float) -> None:
        """A verified webhook event: drop a repeated delivery; wait for the fetch of the response when the
        exporter polls responses (for its error code, reason and tokens); else count from the event."""
        if delivery.delivery_id in self.deliveries:
            delivery.outcome = "duplicate"
        else:
            self.deliveries.add(delivery.delivery_id, now)
            snap = delivery.run
            recalled = self._recall([snap.id]) if snap is not None else {}
            known = self.tracker.known([snap.id], recalled).get(snap.id) if snap is not None else None
            if snap is None:
                delivery.outcome = "accepted"
            elif known is not None and is_terminal(known):
                delivery.outcome = self.tracker.observe_run(snap, now, recalled)
            elif SOURCE_RESPONSES in self.by_id and self._poll_by_id(snap.id, SOURCE_RESPONSES):
                self.deliveries.hold(snap)
                delivery.outcome = "accepted"
            else:  # no key, or the watch list is full: the event alone
                delivery.outcome = self.tracker.observe_run(snap, now, recalled)
        self.on_webhook(delivery.event_type, delivery.outcome)

    def follow(self, run_ids: Sequence[str], source: str) -> None:
        """Poll these runs by id (when that source runs) until they end: ids a receiver learned of."""
        if source not in self.by_id:
            return
        known = self.tracker.known(run_ids, self._recall(run_ids))
        for run_id in run_ids:
            if not is_terminal(known.get(run_id, "")):
                self._poll_by_id(run_id, source)

    def _poll_by_id(self, run_id: str, source: str) -> bool:
        """Register a run for by-id polling; False when the watch list is full (--max-watched)."""
        result = self.watchlist.register(run_id, source)
        if result == "added":
            self.sync_scopes()
        return result != "full"

    def _note_api(self, results: list[PollResult]) -> None:
        """api_up{source}: whether the polls of that source that ended in this tick reached its API."""
        by_source: dict[str, bool] = {}
        for result in results:
            slot = self.scheduler.slots.get(result.scope)
            source = slot.source if slot is not None else next(iter(self.sources), "")
            by_source[source] = by_source.get(source, False) or result.api_reached
        for source, reached in by_source.items():
            self.state.api_up[source] = 1.0 if reached else 0.0

    def _note_stalls(self) -> None:
        """api_up{source} 0 as soon as the source sees its API hang, without waiting for a poll to end."""
        for name, source in self.sources.items():
            if isinstance(source, StallAware) and source.stalled():
                if self.state.api_up.get(name) != 0.0 and self._stall_log.allow(name, self.mono()):
                    log.warning("%s: requests to the API go unanswered; api_up is 0 until one answers", name)
                self.state.api_up[name] = 0.0

    def _apply_received(self, pending: Pending, now: float) -> None:
        """Apply a request's items; it waits for the next successful commit to be answered. A request whose
        items raise (a bug) is answered 503 and the loop goes on; what it changed is committed anyway."""
        try:
            self._apply_item(pending.item, now)
        except Exception as exc:
            if self._store_log.allow("apply", self.wall()):
                log.error("cannot apply a received request: %s (logged once a minute)", _describe(exc))
            fail([pending], "not applied")
            return
        self._answer.append(pending)

    def _apply_item(self, item: RunItems | Registration | Delivery, now: float) -> None:
        if isinstance(item, Delivery):
            self._apply_delivery(item, now)
            return
        if isinstance(item, Registration):
            item.result = (self.watchlist.register(item.scope, item.source) if item.add  # type: ignore[assignment]
                           else self.watchlist.unregister(item.scope))
            if item.result in ("added", "removed"):
                self.sync_scopes()
            return
        agg = self.tracker.aggregates
        outcome = item.outcome
        recalled = self._recall(snap.id for snap in item.runs)  # one lookup round per request
        for snap in item.runs:
            result = self.tracker.observe_run(snap, now, recalled)
            agg.inc(m.PUSH_ITEMS.name, (result,))
            if result == "accepted":
                outcome.accepted += 1
            elif result == "duplicate":
                outcome.duplicates += 1
            else:
                outcome.stale += 1
        self.follow(item.follow, item.follow_source)
        outcome.invalid.extend(item.invalid)
        if item.invalid:
            agg.inc(m.PUSH_ITEMS.name, ("invalid",), len(item.invalid))

    def _log_poll_failure(self, scope: str, error: str) -> None:
        """One line a minute per kind of failure (the error without its attempt count), saying how many
        failures of that kind were not logged since the last line: 1,000 threads behind a bad key are one
        line a minute, not 1,000."""
        held = self.poll_failure_log.allow(_ATTEMPTS.sub("", error), self.mono())
        if held is None:
            return
        if held:
            log.warning("poll of %s failed: %s (%d more like this since the last such line, not logged)",
                        scope, error, held)
        else:
            log.warning("poll of %s failed: %s", scope, error)

    def _log_invalid(self, reason: str, scope: str, now: float) -> None:
        if self._invalid_log.allow(reason, now):
            log.warning("skipped malformed data from %s: %s (logged once a minute per reason)", scope, reason)

    def commit(self) -> bool:
        """Write everything not yet written. On any error keep it all for a retry with backoff: the batch is
        set aside before the store sees it, so nothing taken from the tracker is ever dropped unwritten."""
        try:
            self.deliveries.expire(self.wall())
            batch = _Uncommitted(self.tracker.take_changes(), *self.tracker.aggregates.take_dirty(),
                                 self.watchlist.take_changes(), self.watchlist.take_discovered_changes(),
                                 self.deliveries.take_changes(), self.deliveries.take_pending_changes())
            retrying = self._uncommitted is not None
            if self._uncommitted is not None:
                self._uncommitted.merge(batch)
                batch = self._uncommitted
                if self.mono() < self._store_retry_at:
                    return False
            self._uncommitted = batch
            if retrying:
                self.store.checkpoint()  # a WAL that filled the volume: empty it first, now that it may fit
            meta = {"last_poll_success": repr(self.state.last_poll_success),
                    **{f"discovered_since:{name}": repr(t) for name, t in self.discovered_since.items()}}
            self.store.commit(batch.changes, batch.counters, batch.histograms, meta, batch.registrations,
                              batch.discovered, batch.deliveries, batch.pending)
        except Exception as exc:  # a full disk, a locked file, or a value the store cannot write: never a crash
            self._commit_failed(exc)
            return False
        if retrying:
            log.info("state file %s writable again", self.store.path)
        self._uncommitted = None
        self._store_delay = STORE_RETRY_MIN
        self.health.store_error = None
        return True

    def _commit_failed(self, exc: Exception) -> None:
        self.store.checkpoint()  # a full small volume: a truncated WAL gives room for the retry
        self.tracker.aggregates.inc(m.STORE_ERRORS.name, ())
        self._store_retry_at = self.mono() + self._store_delay
        self._store_delay = min(STORE_RETRY_MAX, self._store_delay * 2)
        self.health.store_error = f"cannot write state file {self.store.path}: {_describe(exc)}"
        if self._store_log.allow("commit", self.wall()):
            log.error("%s; keeping the changes and retrying (logged once a minute)", self.health.store_error)

    def publish(self) -> None:
        """Say the metrics changed. What they show is copied from the state (under a millisecond) only when a
        scrape asks, and the families (~10,000 series) are then built from the copy off this loop."""
        self.collector.update_prepared(self._snapshot)
        self._published_at = self.mono()
        self._unpublished = False

    def _snapshot(self) -> Callable[[], list[Metric]]:
        snap = snapshot(self.tracker, self.state, self.wall(), self.run_sources, (*self.sources, *self.by_id))
        return functools.partial(families, snap)

    async def _shutdown(self) -> None:
        tasks: list[asyncio.Task[object]] = [*self.scheduler.tasks(), *(t for _, _, t in self._discovering)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.step_final()
        for source in self.sources.values():
            await source.aclose()
        for by_id in self.by_id.values():
            await by_id.aclose()

    def step_final(self) -> None:
        """Commit what arrived before the stop. Requests still waiting are answered 200 only if this commit
        wrote their items, else 503 at once (never an answer for what is not in the state file)."""
        received = self.inbox.drain()
        now = self.wall()
        for pending in received:
            self._apply_received(pending, now)
        self._store_retry_at = 0.0
        waiting, self._answer = self._answer, []
        if self.commit():
            resolve(waiting)
        else:
            fail(waiting, "not committed before the stop")

    # -- probes ---------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        age = self.mono() - self.health.last_tick
        limit = max(30.0, 3 * self.schedule.poll_interval)
        return (age < limit, "ok" if age < limit else f"poll loop stalled for {age:.0f}s")

    def ready(self) -> tuple[bool, str]:
        if not self.health.started:
            return False, "starting"
        if self.health.store_error is not None:
            return False, self.health.store_error
        if not self.scheduler.slots:
            return True, "ok (no threads to watch)"
        if self.health.reached_api:
            return True, "ok"
        return False, "waiting for the first poll that reaches the API"
