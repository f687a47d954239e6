"""The loop: starts due polls and discoveries, hands what finished or arrived to the applier, commits (once
per tick, for everything that arrived), answers the receivers, and publishes the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from prometheus_client.metrics_core import Metric

from exporter.applier import Applier, SessionsWiring
from exporter.changeset import ChangeSet
from exporter.committer import Committer, Writer
from exporter.health import Health
from exporter.inbox import Inbox, Pending, fail, resolve
from exporter.logs import RateLimiter
from exporter.metrics import SnapshotCollector, families, snapshot
from exporter.publisher import Publisher
from exporter.scheduler import Schedule, Scheduler
from exporter.selfmetrics import SelfMetrics
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
from exporter.sources.spec import LiveStreams, WebhookScopes
from exporter.sources.webhooks import DeliveryLog
from exporter.store import Store
from exporter.streams import StreamManager
from exporter.tracker import Tracker
from exporter.watchlist import WatchList

log = logging.getLogger(__name__)

STALL_LOG_INTERVAL = 60.0


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
        writer: Writer | None = None,
        streams: Mapping[str, LiveStreams] | None = None,
        webhook_scopes: Mapping[str, WebhookScopes] | None = None,
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
        # Sources and receivers report into this (cli.py hands it to them); the loop reports its own outcomes.
        self.selfmetrics = SelfMetrics(tracker.aggregates)
        self.state = self.selfmetrics.state
        self.health = Health()
        self._wake = asyncio.Event()
        self.inbox = inbox if inbox is not None else Inbox()
        self.inbox.wake = self._wake.set
        self._stall_log = RateLimiter(STALL_LOG_INTERVAL)
        self.publisher = Publisher(collector, self._snapshot, mono)
        self._answer: list[Pending] = []  # received items whose commit has not succeeded yet
        self._committing: list[Pending] = []  # received items the write in flight answers
        self.discoveries = tuple(discoveries)
        self.discover_interval = discover_interval
        self._next_discovery = float("-inf")
        self._discovering: list[tuple[Discovery, float, asyncio.Task[DiscoveryResult]]] = []
        self.deliveries = deliveries if deliveries is not None else DeliveryLog()
        # Every owner of persisted state hands its changes to the committer.
        self.committer = Committer(store, (tracker.take_changes, self.watchlist.take_changes, self._delivery_changes,
                                           self._meta), self.selfmetrics, self.health, wall, mono, writer)
        self.applier = Applier(tracker=tracker, scheduler=self.scheduler, watchlist=self.watchlist,
                               metrics=self.selfmetrics, health=self.health, recall=self.committer.recall,
                               deliveries=self.deliveries, by_id=self.by_id, sync=self.sync_scopes, mono=mono,
                               default_source=next(iter(self.sources), ""), discovered_since=discovered_since,
                               sessions=self._sessions_wiring(webhook_scopes or {}))
        self.streams = self._stream_manager(streams or {})

    def _sessions_wiring(self, webhook_scopes: Mapping[str, WebhookScopes]) -> SessionsWiring | None:
        """Webhook events that name a source's scopes (sessions) reach its watch list through discovery."""
        if not webhook_scopes:
            return None
        name, scopes = next(iter(webhook_scopes.items()))  # one source has them (sessions)
        return SessionsWiring(source=name, discover_now=self.discover_now, on_event=self._session_event,
                              filtered=scopes.filtered)

    def _session_event(self, session: str, event_type: str) -> None:
        """A webhook event of a watched session: its stream deals with it, or it is polled at once."""
        if self.streams is None or not self.streams.on_webhook(session, event_type):
            self.scheduler.hurry(session)

    def _stream_manager(self, streams: Mapping[str, LiveStreams]) -> StreamManager | None:
        """Live event streams of the source that has them (sessions, with --session-streams above 0)."""
        if not streams:
            return None
        name, live = next(iter(streams.items()))  # one source has them (sessions)
        return StreamManager(live.reader, live.limit, name, tracker=self.tracker, scheduler=self.scheduler,
                             metrics=self.selfmetrics, recall=self.applier.recall, wake=self._wake.set,
                             mono=self.mono)

    def discover_now(self) -> None:
        """A discovery pass as soon as none is running (a webhook named a scope the exporter does not know)."""
        self._next_discovery = float("-inf")
        self._wake.set()

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

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.watchlist.threads_file is not None:
            self.watchlist.threads_file.changed()
        self.sync_scopes()
        self.publish()
        self.health.started = True
        loop = asyncio.get_running_loop()

        def written() -> None:  # from the writer thread
            loop.call_soon_threadsafe(self._written)
        self.committer.on_done = written
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
        if self.streams is not None:
            self.streams.sync()
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
                or bool(self.tracker.known([scope], self.applier.recall([scope]))))

    def _stop_rule(self, scope: str) -> StopRule:
        return lambda seen: self.tracker.should_stop(scope, seen, self.applier.recall(s.id for s in seen))

    async def _wait(self) -> None:
        timeout = self.scheduler.next_wake()
        retry_in = self.committer.retry_in()
        if retry_in is not None:
            timeout = min(timeout, retry_in)
        publish_in = self.publisher.wait_limit()
        if publish_in is not None:
            timeout = min(timeout, publish_in)
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))
        self._wake.clear()

    def step(self) -> None:
        """Apply whatever finished or arrived, commit it, answer the receivers, publish."""
        self.applier.check_threads_file()
        reaped = self._reap()
        results = [r for r in reaped if isinstance(r, PollResult)]
        fetches = [r for r in reaped if isinstance(r, FetchResult)]
        received = self.inbox.drain()
        now = self.wall()
        if self._discovering:
            self._reap_discoveries(now)
        if results:
            self.applier.polls(results, now)
        if fetches:
            self.applier.fetches(fetches, now)
        streamed = self.streams is not None and self.streams.apply(now)
        self._note_stalls()
        self._answer += [pending for pending in received if self.applier.received(pending, now)]
        self.tracker.expire(now)
        answered = self._collect_commit()
        if (received or reaped or streamed or self._unwritten()) and self.committer.start():
            self._committing, self._answer = self._answer, []
            answered = self._collect_commit() or answered  # a write that ran at once (InlineWriter)
        self.publisher.after_tick(changed=bool(reaped or received or streamed), answered=answered)

    def _written(self) -> None:
        """A write has ended: answer its requests now; a tick follows only if something waits to be written
        (or a refused write waits for its retry)."""
        self._collect_commit()
        if self._answer or self._unwritten():
            self._wake.set()

    def _unwritten(self) -> bool:
        """The tracker has changes not handed to the writer yet, or a change set is being written or waits."""
        return bool(self.tracker.changes or self.tracker.aggregates.dirty or self.committer.uncommitted is not None)

    def _collect_commit(self) -> bool:
        """Answer the requests of a write that has ended: 200 once written; refused, they wait for the retry.
        True when some were answered."""
        ended = self.committer.collect()
        if ended is None:
            return False
        waiting, self._committing = self._committing, []
        if not ended:
            self._answer[:0] = waiting
            return False
        resolve(waiting)
        return bool(waiting)

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
                    self.applier.discovery(discovery, started, task.result(), now)
        self._discovering = running

    def _note_stalls(self) -> None:
        """api_up{source} 0 as soon as the source sees its API hang, without waiting for a poll to end."""
        for name, source in self.sources.items():
            if (isinstance(source, StallAware) and source.stalled() and self.selfmetrics.api_up(name, False)
                    and self._stall_log.allow(name, self.mono())):
                log.warning("%s: requests to the API go unanswered; api_up is 0 until one answers", name)

    # -- persisted state the daemon owns ----------------------------------------------------

    def _delivery_changes(self) -> ChangeSet:
        self.deliveries.expire(self.wall())  # deliveries past the window leave the log with this commit
        return self.deliveries.take_changes()

    def _meta(self) -> ChangeSet:
        return ChangeSet(meta={
            "last_poll_success": repr(self.state.last_poll_success),
            **{f"discovered_since:{name}": repr(t) for name, t in self.applier.discovered_since.items()}})

    # -- publishing ---------------------------------------------------------------------------

    def publish(self) -> None:
        self.publisher.publish()

    def _snapshot(self) -> Callable[[], list[Metric]]:
        snap = snapshot(self.tracker, self.state, self.wall(), self.run_sources, (*self.sources, *self.by_id))
        return functools.partial(families, snap)

    # -- stopping and probes ----------------------------------------------------------------

    async def _shutdown(self) -> None:
        tasks: list[asyncio.Task[object]] = [*self.scheduler.tasks(), *(t for _, _, t in self._discovering)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.streams is not None:
            await self.streams.aclose()
        self.step_final()
        self.committer.close()
        for source in self.sources.values():
            await source.aclose()
        for by_id in self.by_id.values():
            await by_id.aclose()

    def step_final(self) -> None:
        """Commit what arrived before the stop. Requests still waiting are answered 200 only if this commit
        wrote their items, else 503 at once (never an answer for what is not in the state file)."""
        now = self.wall()
        self.committer.wait()  # the write in flight ends first
        self._collect_commit()
        self._answer += [pending for pending in self.inbox.drain() if self.applier.received(pending, now)]
        waiting, self._answer = self._answer, []
        if self.committer.commit(now_or_never=True):
            resolve(waiting)
        else:
            fail(waiting, "not committed before the stop")

    def healthy(self) -> tuple[bool, str]:
        return self.health.healthy(self.mono(), self.schedule.poll_interval)

    def ready(self) -> tuple[bool, str]:
        return self.health.ready(bool(self.scheduler.slots))
