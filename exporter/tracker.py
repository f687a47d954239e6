"""The run lifecycle state machine. Pure: snapshots and `now` in, transitions and aggregates out.

Semantics (the README's "What the numbers mean" states them for users):
- A run already terminal when its thread is first swept is *history*: never counted, never observed.
- Any other run that reaches a terminal status is counted exactly once, however late it is seen.
- A thread's *horizon* is the newest `created_at` of runs it has forgotten or never tracked; an unseen
  terminal run at or below it was accounted for before (or predates the watch) and is history too.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exporter import statuses
from exporter.aggregates import Aggregates, LabelValues
from exporter.metrics_spec import RATIO_WINDOWS
from exporter.model import RunSnapshot

FINISHED = "assistants_runs_finished_total"
STATUS_DURATION = "assistants_run_status_duration_seconds"
RUN_DURATION = "assistants_run_duration_seconds"
ERRORS = "assistants_run_errors_total"
INCOMPLETE = "assistants_run_incomplete_total"
TOKENS = "assistants_run_tokens_total"

_MAX_WINDOW = max(RATIO_WINDOWS.values())
# A new run seen in one of these has not left its first status: nothing ended unobserved.
_BEFORE_START = frozenset({statuses.CREATED, statuses.QUEUED, statuses.UNKNOWN})


@dataclass(slots=True)
class RunState:
    id: str
    thread_id: str
    status: str
    created_at: int
    stint_start: float  # when the current status began: API time where known, else observation time
    assistant_id: str = ""
    model: str = ""
    started_at: int | None = None
    ended_at: float | None = None  # terminal runs: drives retention
    history: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in statuses.TERMINAL


@dataclass(slots=True)
class ThreadState:
    id: str
    swept: bool = False  # one full poll succeeded: from now on unseen terminal runs are new
    horizon: int = -1
    gone: bool = False
    # Newest created_at that a successful poll read down from: every run created before it has been seen.
    # A failed poll may have read only the newest pages, so it does not move this.
    covered: int = -1


@dataclass(frozen=True, slots=True)
class Finish:
    at: float  # when the exporter counted it
    labels: LabelValues
    status: str


@dataclass(slots=True)
class Changes:
    """What the store must write for one apply, in one transaction."""

    runs: dict[str, RunState] = field(default_factory=dict)
    deleted_runs: set[str] = field(default_factory=set)
    threads: dict[str, ThreadState] = field(default_factory=dict)
    deleted_threads: set[str] = field(default_factory=set)
    finishes: list[Finish] = field(default_factory=list)
    finishes_before: float | None = None  # prune finish events older than this

    def __bool__(self) -> bool:
        return bool(self.runs or self.deleted_runs or self.threads or self.deleted_threads or self.finishes
                    or self.finishes_before is not None)

    def upsert(self, run: RunState) -> None:
        self.runs[run.id] = run
        self.deleted_runs.discard(run.id)

    def delete(self, run_id: str) -> None:
        self.runs.pop(run_id, None)
        self.deleted_runs.add(run_id)


@dataclass(frozen=True, slots=True)
class Stint:
    status: str
    start: float
    end: float


class Tracker:
    def __init__(
        self,
        extra_labels: Sequence[str],
        retention: float,
        aggregates: Aggregates | None = None,
    ) -> None:
        self.extra_labels = tuple(extra_labels)
        self.retention = retention
        self.aggregates = aggregates if aggregates is not None else Aggregates()
        self.runs: dict[str, RunState] = {}
        self.threads: dict[str, ThreadState] = {}
        # Indexes kept in step with `runs`, so that per-tick views cost O(unfinished runs), not O(runs).
        self._by_thread: dict[str, set[str]] = {}
        self._open: dict[str, set[str]] = {}  # unfinished runs by thread
        self._counts: dict[tuple[str, ...], int] = {}  # (status, *labels) -> runs in assistants_runs
        self._retire_at: list[tuple[float, str]] = []  # heap of (end + retention, run id)
        self._retired: dict[str, set[str]] = {}  # past retention, kept until coverage passes them
        self._oldest: dict[tuple[str, ...], list[tuple[float, str]]] = {}  # lazy heaps of (stint start, id)
        self.finishes: deque[Finish] = deque()  # the longest window's finish events, as persisted
        self._window_events: dict[str, deque[Finish]] = {w: deque() for w in RATIO_WINDOWS}
        self._window_totals: dict[tuple[str, LabelValues], list[int]] = {}  # [finished, failed, expired]
        self.changes = Changes()

    # -- loading and thread membership ------------------------------------------------------

    def restore(self, threads: Iterable[ThreadState], runs: Iterable[RunState], finishes: Iterable[Finish]) -> None:
        for t in threads:
            self.threads[t.id] = t
        for r in runs:
            self._put(r)
        for finish in sorted(finishes, key=lambda f: f.at):
            self._record_finish(finish)

    def watch(self, thread_id: str) -> None:
        if thread_id not in self.threads:
            self.threads[thread_id] = ThreadState(thread_id)
            self.changes.threads[thread_id] = self.threads[thread_id]

    def unwatch(self, thread_id: str) -> None:
        """Stop watching: its runs leave every gauge; counters keep what they counted."""
        self.threads.pop(thread_id, None)
        for run_id in list(self._by_thread.get(thread_id, ())):
            self._drop(run_id)
        self.changes.threads.pop(thread_id, None)
        self.changes.deleted_threads.add(thread_id)

    def labels_of(self, run: RunState | RunSnapshot) -> LabelValues:
        return tuple(run.assistant_id if name == "assistant_id" else run.model for name in self.extra_labels)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        return changes

    # -- polling economy ---------------------------------------------------------------------

    def is_active(self, thread_id: str) -> bool:
        return bool(self._open.get(thread_id))

    def accounted(self, thread_id: str, snap: RunSnapshot) -> bool:
        """True when this run needs no more attention: known terminal, or below the thread's horizon."""
        known = self.runs.get(snap.id)
        if known is not None:
            return known.terminal
        thread = self.threads.get(thread_id)
        return thread is not None and snap.created_at <= thread.horizon

    def should_stop(self, thread_id: str, seen: Sequence[RunSnapshot]) -> bool:
        """Paging may stop once it re-observed every unfinished run and reached an accounted-for run
        older than what the last successful poll covered (so no page between them went unread)."""
        thread = self.threads.get(thread_id)
        if thread is None or not thread.swept:
            return False
        seen_ids = {s.id for s in seen}
        if any(r not in seen_ids for r in self._open.get(thread_id, ())):
            return False
        return any(s.created_at < thread.covered and self.accounted(thread_id, s) for s in seen)

    # -- observations ------------------------------------------------------------------------

    def observe(self, thread_id: str, snaps: Sequence[RunSnapshot], now: float, *, complete: bool,
                ok: bool) -> None:
        """Apply one poll of one thread. `ok`: the poll succeeded; `complete`: it listed every run."""
        self.watch(thread_id)
        thread = self.threads[thread_id]
        if thread.gone:
            thread.gone = False
            self.changes.threads[thread_id] = thread
        seen: set[str] = set()
        for snap in snaps:
            if snap.id in seen:
                continue
            seen.add(snap.id)
            self._observe_one(thread, snap, now)
        if complete:
            self._drop_vanished(thread, seen)
        if ok:
            newest = max((s.created_at for s in snaps), default=thread.covered)
            if not thread.swept or newest > thread.covered:
                thread.swept = True
                thread.covered = max(thread.covered, newest)
                self.changes.threads[thread_id] = thread
                self._release_retired(thread)

    def mark_gone(self, thread_id: str) -> None:
        """The API says the thread does not exist: its unfinished runs can never be seen to end."""
        self.watch(thread_id)
        thread = self.threads[thread_id]
        thread.gone = True
        self.changes.threads[thread_id] = thread
        for run_id in list(self._open.get(thread_id, ())):
            self._drop(run_id)

    def _observe_one(self, thread: ThreadState, snap: RunSnapshot, now: float) -> None:
        known = self.runs.get(snap.id)
        if known is None:
            self._first_sight(thread, snap, now)
        elif not known.terminal:
            self._update(known, snap, now)

    def _first_sight(self, thread: ThreadState, snap: RunSnapshot, now: float) -> None:
        if not thread.swept or snap.created_at <= thread.horizon or snap.status in _BEFORE_START:
            self._first_sight_unwatched(thread, snap, now)
            return
        # Created while we watched: it was queued from created_at on, whatever we see now.
        run = RunState(snap.id, thread.id, statuses.QUEUED, snap.created_at, float(snap.created_at),
                       snap.assistant_id, snap.model)
        self._put(run)
        if snap.status != statuses.QUEUED:
            self._update(run, snap, now)
        self.changes.upsert(run)

    def _first_sight_unwatched(self, thread: ThreadState, snap: RunSnapshot, now: float) -> None:
        if snap.terminal:
            ended = float(snap.ended_at() or snap.created_at)
            if ended + self.retention <= now:
                self._raise_horizon(thread, snap.created_at)
                return
            run = RunState(snap.id, thread.id, snap.status, snap.created_at, ended, snap.assistant_id,
                           snap.model, snap.started_at, ended, history=True)
        else:
            run = RunState(snap.id, thread.id, snap.status, snap.created_at,
                           _entry_time(snap, now), snap.assistant_id, snap.model, snap.started_at)
        self._put(run)
        self.changes.upsert(run)

    def _update(self, run: RunState, snap: RunSnapshot, now: float) -> None:
        if run.started_at is None and snap.started_at is not None:
            run.started_at = snap.started_at
            self.changes.upsert(run)
        if snap.status == run.status and (snap.assistant_id, snap.model) == (run.assistant_id, run.model):
            return  # the common case: nothing moved, and the indexes stay as they are
        self._unindex(run)
        try:
            self._transition(run, snap, now)
        finally:
            self._index(run)

    def _transition(self, run: RunState, snap: RunSnapshot, now: float) -> None:
        if (run.assistant_id, run.model) != (snap.assistant_id, snap.model):
            run.assistant_id, run.model = snap.assistant_id, snap.model
            self.changes.upsert(run)
        if snap.status == run.status:
            return
        labels = self.labels_of(run)
        for stint in _ended_stints(run, snap, now):
            self.aggregates.observe(STATUS_DURATION, (stint.status, *labels), max(0.0, stint.end - stint.start))
        first_in_progress = run.status == statuses.QUEUED and snap.status == statuses.IN_PROGRESS
        run.status = snap.status
        if snap.terminal:
            self._finish(run, snap, now)
        else:
            run.stint_start = float(snap.started_at) if first_in_progress and snap.started_at else now
        self.changes.upsert(run)

    def _finish(self, run: RunState, snap: RunSnapshot, now: float) -> None:
        ended = float(snap.ended_at() or now)
        run.ended_at = run.stint_start = ended
        labels = self.labels_of(run)
        agg = self.aggregates
        agg.inc(FINISHED, (snap.status, *labels))
        agg.observe(RUN_DURATION, (snap.status, *labels), max(0.0, ended - run.created_at))
        if snap.status == "failed":
            agg.inc(ERRORS, (snap.error_code or "unknown", *labels))
        if snap.status == "incomplete":
            agg.inc(INCOMPLETE, (snap.incomplete_reason or "unknown", *labels))
        if snap.prompt_tokens:
            agg.inc(TOKENS, ("prompt", *labels), snap.prompt_tokens)
        if snap.completion_tokens:
            agg.inc(TOKENS, ("completion", *labels), snap.completion_tokens)
        finish = Finish(now, labels, snap.status)
        self._record_finish(finish)
        self.changes.finishes.append(finish)

    def _drop_vanished(self, thread: ThreadState, seen: set[str]) -> None:
        """A full listing without a known unfinished run: it was deleted, and can never be seen to end."""
        for run_id in list(self._open.get(thread.id, ())):
            if run_id not in seen:
                self._drop(run_id)  # never counted, so it may count if it ever comes back finished

    # -- time passing ------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget finished runs past retention, and finish events older than the longest ratio window.

    A forgotten run raises its thread's horizon, so seeing it again later never counts it twice."""
        heap = self._retire_at
        while heap and heap[0][0] <= now:
            deadline, run_id = heapq.heappop(heap)
            run = self.runs.get(run_id)
            if run is None or run.ended_at is None or run.ended_at + self.retention != deadline:
                continue  # stale entry
            if self._forgettable(run):
                self._forget(run_id)
            else:
                self._retire(run)
        cutoff = now - _MAX_WINDOW
        if self.finishes and self.finishes[0].at < cutoff:
            while self.finishes and self.finishes[0].at < cutoff:
                self.finishes.popleft()
            self.changes.finishes_before = cutoff

    # -- views for metrics -------------------------------------------------------------------

    def label_sets(self) -> set[LabelValues]:
        """Every extra-label combination seen: in counters (persisted) and among known runs."""
        n = len(self.extra_labels)
        found = {key[1:] for key, count in self._counts.items() if count}
        for (name, values) in self.aggregates.counters:
            if name == FINISHED:
                found.add(values[1:])
        return {v for v in found if len(v) == n}

    def status_counts(self) -> dict[tuple[str, ...], int]:
        """(status, *labels) -> runs in assistants_runs: unfinished, or finished within retention."""
        return {key: count for key, count in self._counts.items() if count}

    def recount(self) -> dict[tuple[str, ...], int]:
        """status_counts() the slow way, from every run: for tests of the indexes."""
        out: dict[tuple[str, ...], int] = {}
        retired = set().union(*self._retired.values()) if self._retired else set()
        for run in self.runs.values():
            if run.id not in retired:
                key = (run.status, *self.labels_of(run))
                out[key] = out.get(key, 0) + 1
        return out

    def oldest_ages(self, now: float) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for key in list(self._oldest):
            heap = self._oldest[key]
            while heap and not self._is_current(key, *heap[0]):
                heapq.heappop(heap)  # a stint that has ended since it was pushed
            if heap:
                out[key] = now - heap[0][0]
            else:
                del self._oldest[key]
        return out

    def _is_current(self, key: tuple[str, ...], stint_start: float, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return (run is not None and run.ended_at is None and run.stint_start == stint_start
                and (run.status, *self.labels_of(run)) == key)

    def ratios(self, now: float) -> dict[tuple[str, ...], float]:
        """(kind 'failure'|'expiry', window, *labels) -> ratio among runs finished within the window."""
        for window, seconds in RATIO_WINDOWS.items():
            events = self._window_events[window]
            while events and events[0].at < now - seconds:
                self._tally(window, events.popleft(), -1)
        out: dict[tuple[str, ...], float] = {}
        for (window, labels), (total, failed, expired) in self._window_totals.items():
            if total:
                out[("failure", window, *labels)] = failed / total
                out[("expiry", window, *labels)] = expired / total
        return out

    def _record_finish(self, finish: Finish) -> None:
        self.finishes.append(finish)
        for window in RATIO_WINDOWS:
            self._window_events[window].append(finish)
            self._tally(window, finish, +1)

    def _tally(self, window: str, finish: Finish, sign: int) -> None:
        totals = self._window_totals.setdefault((window, finish.labels), [0, 0, 0])
        totals[0] += sign
        totals[1] += sign * (finish.status == "failed")
        totals[2] += sign * (finish.status == "expired")

    def thread_states(self) -> dict[str, int]:
        out = {"active": 0, "idle": 0, "gone": 0}
        for thread in self.threads.values():
            out["gone" if thread.gone else "active" if self.is_active(thread.id) else "idle"] += 1
        return out

    # -- bookkeeping -------------------------------------------------------------------------

    def _put(self, run: RunState) -> None:
        self.runs[run.id] = run
        self._by_thread.setdefault(run.thread_id, set()).add(run.id)
        self._index(run)

    def _drop(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        self._unindex(run)
        _discard(self._by_thread, run.thread_id, run_id)
        self.changes.delete(run_id)

    def _index(self, run: RunState) -> None:
        key = (run.status, *self.labels_of(run))
        self._counts[key] = self._counts.get(key, 0) + 1
        if run.ended_at is None:
            self._open.setdefault(run.thread_id, set()).add(run.id)
            heapq.heappush(self._oldest.setdefault(key, []), (run.stint_start, run.id))
        else:
            heapq.heappush(self._retire_at, (run.ended_at + self.retention, run.id))

    def _unindex(self, run: RunState) -> None:
        if run.id in self._retired.get(run.thread_id, ()):
            _discard(self._retired, run.thread_id, run.id)
        else:
            key = (run.status, *self.labels_of(run))
            self._counts[key] -= 1
        _discard(self._open, run.thread_id, run.id)

    def _retire(self, run: RunState) -> None:
        """Past retention: out of assistants_runs, but kept so it cannot be mistaken for a new run."""
        self._counts[(run.status, *self.labels_of(run))] -= 1
        self._retired.setdefault(run.thread_id, set()).add(run.id)

    def _release_retired(self, thread: ThreadState) -> None:
        for run_id in list(self._retired.get(thread.id, ())):
            if self.runs[run_id].created_at < thread.covered:
                self._forget(run_id)

    def _forgettable(self, run: RunState) -> bool:
        """Only below what a successful poll covered: an older unseen run could hide behind the horizon."""
        thread = self.threads.get(run.thread_id)
        return thread is None or run.created_at < thread.covered

    def _forget(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return
        thread = self.threads.get(run.thread_id)
        if thread is not None:
            self._raise_horizon(thread, run.created_at)
        self._drop(run_id)

    def _raise_horizon(self, thread: ThreadState, created_at: int) -> None:
        if created_at > thread.horizon:
            thread.horizon = created_at
            self.changes.threads[thread.id] = thread


def _discard(index: dict[str, set[str]], key: str, item: str) -> None:
    items = index.get(key)
    if items is not None:
        items.discard(item)
        if not items:
            del index[key]


def _entry_time(snap: RunSnapshot, now: float) -> float:
    """Best known start of the current status of a run first seen mid-flight."""
    if snap.status in (statuses.QUEUED, statuses.CREATED):
        return float(snap.created_at)
    if snap.status == statuses.IN_PROGRESS and snap.started_at is not None:
        return float(snap.started_at)
    return now


def _ended_stints(run: RunState, snap: RunSnapshot, now: float) -> list[Stint]:
    """Non-terminal stints that ended between the last observation of `run` and `snap`."""
    end = float(snap.ended_at() or now) if snap.terminal else now
    started = snap.started_at if snap.started_at is not None else run.started_at
    if run.status != statuses.QUEUED or started is None:
        return [Stint(run.status, run.stint_start, end)]
    # The API times queued exactly; an in_progress stint it implies but we never saw runs to `end`.
    stints = [Stint(statuses.QUEUED, float(run.created_at), float(started))]
    if snap.status != statuses.IN_PROGRESS:
        stints.append(Stint(statuses.IN_PROGRESS, float(started), end))
    return stints
