"""Applying what the loop reaped or received, at a time `now` it passes in: finished polls and fetches,
discovery passes, and the receivers' items go to the tracker and the watch list; what they say about the
exporter itself goes to SelfMetrics; webhook events go through their policy (sources/webhook_policy.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from exporter.committer import describe
from exporter.health import Health
from exporter.inbox import Delivery, Pending, Registration, RunItems, fail
from exporter.logs import CountingRateLimiter, RateLimiter
from exporter.model import REASON_THREADS_FILE_LINE, SOURCE_RESPONSES
from exporter.runstate import Remembered
from exporter.scheduler import Scheduler
from exporter.selfmetrics import SelfMetrics
from exporter.sources import Discovery, DiscoveryResult, FetchResult, PollResult
from exporter.sources.session_events import SessionEvents
from exporter.sources.webhook_policy import WebhookPolicy
from exporter.sources.webhooks import DeliveryLog
from exporter.statuses import is_terminal
from exporter.tracker import Tracker
from exporter.watchlist import WatchList

log = logging.getLogger("exporter.daemon")  # the loop's logger, as before this module split off

THREADS_FILE_CHECK = 1.0  # seconds; the contract is "picked up within 2 s"
INVALID_LOG_INTERVAL = 60.0
POLL_FAILURE_LOG_INTERVAL = 60.0  # per kind of failure, across threads
_ATTEMPTS = re.compile(r" after \d+ attempts?")


@dataclass(frozen=True, slots=True)
class SessionsWiring:
    """A source whose scopes webhook events name (sessions): how those events reach its discovery."""

    source: str  # its name (and its discovery's)
    discover_now: Callable[[], None]  # a discovery pass as soon as none is running
    on_event: Callable[[str, str], None]  # (session, event type) of a watched session
    filtered: bool  # --agent-id: discovery lists only some agents' sessions


class Applier:
    def __init__(self, *, tracker: Tracker, scheduler: Scheduler, watchlist: WatchList, metrics: SelfMetrics,
                 health: Health, recall: Callable[[Sequence[str]], Mapping[str, Remembered]],
                 deliveries: DeliveryLog, by_id: Collection[str], default_source: str, sync: Callable[[], None],
                 mono: Callable[[], float], discovered_since: Mapping[str, float] | None = None,
                 sessions: SessionsWiring | None = None) -> None:
        self.tracker = tracker
        self.scheduler = scheduler
        self.watchlist = watchlist
        self.metrics = metrics
        self.health = health
        self._recall = recall  # what the state file remembers of ids the tracker does not hold
        self.by_id = frozenset(by_id)
        self.default_source = default_source  # api_up's source for a poll whose slot is gone
        self.sync = sync  # the scheduler follows the watch list
        self.mono = mono
        # Per discovery: when its last finished pass started. A scope created after that is new (born watched).
        self.discovered_since: dict[str, float] = dict(discovered_since or {})
        self._next_file_check = 0.0
        self.poll_failure_log = CountingRateLimiter(POLL_FAILURE_LOG_INTERVAL)
        self._invalid_log = RateLimiter(INVALID_LOG_INTERVAL)
        self._apply_log = RateLimiter(INVALID_LOG_INTERVAL)
        fetch = (lambda run_id: self.poll_by_id(run_id, SOURCE_RESPONSES)) if SOURCE_RESPONSES in by_id else None
        self.sessions_source = sessions.source if sessions is not None else None
        self.sessions = None if sessions is None else SessionEvents(
            watchlist=watchlist, hurry=sessions.on_event, discover_now=sessions.discover_now,
            filtered=sessions.filtered, on_added=lambda _: metrics.discovered())
        self.webhooks = WebhookPolicy(deliveries, tracker, metrics, self.recall, fetch,
                                      self.sessions.event if self.sessions is not None else None)

    def recall(self, run_ids: Iterable[str]) -> Mapping[str, Remembered]:
        """What the state file remembers of the ids the tracker does not hold: one lookup round."""
        unknown = self.tracker.unknown(run_ids)
        return self._recall(unknown) if unknown else {}

    # -- listings and fetches ---------------------------------------------------------------

    def polls(self, results: list[PollResult], now: float) -> None:
        """api_up{source}: whether the polls of that source that ended in this tick reached its API."""
        for result in results:
            self._poll(result, now)
        reached: dict[str, bool] = {}
        for result in results:
            slot = self.scheduler.slots.get(result.scope)
            source = slot.source if slot is not None else self.default_source
            reached[source] = reached.get(source, False) or result.api_reached
        for source, up in reached.items():
            self.metrics.api_up(source, up)

    def _poll(self, result: PollResult, now: float) -> None:
        tracker = self.tracker
        if result.outcome == "gone":
            tracker.mark_gone(result.scope)
        else:
            tracker.observe_listing(result.scope, result.runs, now, complete=result.complete,
                                    ok=result.outcome == "ok", recalled=self.recall(s.id for s in result.runs))
        for reason, count in result.invalid.items():
            self.metrics.invalid(reason, count)
            self._log_invalid(reason, result.scope, now)
        self.metrics.poll_duration(result.duration)
        if result.api_reached:
            self._reached(now)
        if result.error:
            self._log_poll_failure(result.scope, result.error)
        self.health.polls_applied += 1
        self.scheduler.finished(result, tracker.is_active(result.scope))

    def fetches(self, fetches: list[FetchResult], now: float) -> None:
        """Single-run updates from by-id polls. A run that ended, or is gone (404), leaves the watch list."""
        reached: dict[str, bool] = {}
        released = False
        recalled = self.recall(r.run_id for r in fetches)
        for result in fetches:
            slot = self.scheduler.slots.get(result.run_id)
            if slot is not None:
                reached[slot.source] = reached.get(slot.source, False) or result.api_reached
            if result.invalid_reason is not None:
                self.metrics.invalid(result.invalid_reason)
                self._log_invalid(result.invalid_reason, result.run_id, now)
            if result.api_reached:
                self._reached(now)
            failures = slot.failures + (result.outcome == "error") if slot is not None else 0
            if result.outcome == "ok" and result.run is not None:
                self.tracker.observe_run(self.webhooks.with_event_end(result.run), now, recalled)
            elif (held := self.webhooks.give_up(result, failures)) is not None:
                self.tracker.vanish(result.run_id)  # the fetch failed: count from the event alone
                self.tracker.observe_run(held, now, recalled)
            elif result.outcome == "gone":
                self.tracker.vanish(result.run_id)
            known = self.tracker.known([result.run_id], recalled).get(result.run_id)
            if result.outcome == "gone" or (known is not None and is_terminal(known)):
                released = self.watchlist.release(result.run_id) or released
            elif result.error:
                log.warning("fetch of %s failed: %s", result.run_id, result.error)
            self.scheduler.fetched(result)
        for source, up in reached.items():
            self.metrics.api_up(source, up)
        if released:
            self.sync()

    def _reached(self, now: float) -> None:
        self.metrics.api_reached(now)
        self.health.reached_api = True

    # -- the watch list ---------------------------------------------------------------------

    def check_threads_file(self) -> None:
        now = self.mono()
        threads_file = self.watchlist.threads_file
        if threads_file is None or now < self._next_file_check:
            return
        self._next_file_check = now + THREADS_FILE_CHECK
        changed = threads_file.changed()
        rejected = threads_file.take_rejected()
        if rejected:
            self.metrics.invalid(REASON_THREADS_FILE_LINE, rejected)
        if changed:
            log.info("threads file %s: %d threads", threads_file.path, len(threads_file.threads))
            self.sync()

    # -- discoveries ------------------------------------------------------------------------

    def discovery(self, discovery: Discovery, started: float, result: DiscoveryResult, now: float) -> None:
        since = self.discovered_since.get(discovery.name)
        # created_at is whole seconds: a scope created in the second a pass started may be missing from it.
        born_after = None if since is None else math.floor(since) - 1
        for scope, created_at in result.scopes:
            if self.watchlist.discover(scope, discovery.name, created_at):
                self.metrics.discovered()
                if born_after is not None and created_at >= born_after:
                    self.tracker.watch(scope, born=created_at)
        if result.error is None:
            self.discovered_since[discovery.name] = started
        if self.sessions is not None and discovery.name == self.sessions_source:
            self.sessions.after_discovery(started, result.error is None)
        for reason, count in result.invalid.items():
            self.metrics.invalid(reason, count)
        self.metrics.api_up(discovery.name, result.api_reached)
        if result.error:
            log.warning("%s discovery: %s", discovery.name, result.error)
        for scope, changed_at in result.active.items():
            self.watchlist.touch(scope, changed_at)
        # A discovered scope that is idle and older than the lookback (or last changed before it) leaves.
        horizon = now - discovery.lookback
        for scope, (source, created_at) in list(self.watchlist.discovered.items()):
            if source == discovery.name and created_at < horizon and not self.tracker.is_active(scope):
                self.watchlist.undiscover(scope)
        self.sync()

    # -- received items ---------------------------------------------------------------------

    def received(self, pending: Pending, now: float) -> bool:
        """Apply a request's items; True when it is to wait for the next successful commit to be answered.
        A request whose items raise (a bug) is answered 503 and the loop goes on; what it changed is
        committed anyway."""
        try:
            self._item(pending.item, now)
        except Exception as exc:
            if self._apply_log.allow("apply", now):
                log.error("cannot apply a received request: %s (logged once a minute)", describe(exc))
            fail([pending], "not applied")
            return False
        return True

    def _item(self, item: RunItems | Registration | Delivery, now: float) -> None:
        if isinstance(item, Delivery):
            self.webhooks.deliver(item, now)
            return
        if isinstance(item, Registration):
            item.result = (self.watchlist.register(item.scope, item.source) if item.add  # type: ignore[assignment]
                           else self.watchlist.unregister(item.scope))
            if item.result in ("added", "removed"):
                self.sync()
            return
        outcome = item.outcome
        recalled = self.recall(snap.id for snap in item.runs)  # one lookup round per request
        for snap in item.runs:
            result = self.tracker.observe_run(snap, now, recalled)
            self.metrics.push_items(result)
            if result == "accepted":
                outcome.accepted += 1
            elif result == "duplicate":
                outcome.duplicates += 1
            else:
                outcome.stale += 1
        self.follow(item.follow, item.follow_source)
        outcome.invalid.extend(item.invalid)
        if item.invalid:
            self.metrics.push_items("invalid", len(item.invalid))

    def follow(self, run_ids: Sequence[str], source: str) -> None:
        """Poll these runs by id (when that source runs) until they end: ids a receiver learned of."""
        if source not in self.by_id:
            return
        known = self.tracker.known(run_ids, self.recall(run_ids))
        for run_id in run_ids:
            if not is_terminal(known.get(run_id, "")):
                self.poll_by_id(run_id, source)

    def poll_by_id(self, run_id: str, source: str) -> bool:
        """Register a run for by-id polling; False when the watch list is full (--max-watched)."""
        result = self.watchlist.register(run_id, source)
        if result == "added":
            self.sync()
        return result != "full"

    # -- logs -------------------------------------------------------------------------------

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
