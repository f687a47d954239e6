"""The run lifecycle state machine. Pure: snapshots and `now` in, transitions and aggregates out.

Glossary (the README's "What the numbers mean" states the semantics for users):
- *scope*: what a listing source lists runs under (a thread). A *watched* scope is one the exporter polls;
  `Tracker.scopes` holds exactly those. A run may name a scope nobody watches, or none ("").
- *listing*: one poll of one scope (`observe_listing`), full (`complete`: read to the end) or partial.
- *single-run update*: one report about one run (`observe_run`): a push, a poll by id, a webhook.
- *sweep*: the first successful listing of a scope. A run already terminal then is *history*: never
  counted, never observed. A scope that discovery finds created after an earlier discovery pass finished is
  *born watched*: swept from its creation, so all its runs count. A run first seen through a single-run
  update is *live*: counted once, even if it is already terminal.
- *horizon*: the newest `created_at` of runs a scope has forgotten or never tracked; an unseen terminal run
  at or below it was accounted for before (or predates the watch), so it is history too.
- *covered*: the newest `created_at` a successful listing read down from; nothing older went unread.
- *retention*: a finished run stays in `assistants_runs` for `--terminal-retention`, then is *retired*
  (kept only to recognise it) until it can be *forgotten*: below `covered` for a watched scope, and, when
  single-run updates arrive (a receiver runs), not before the *dedupe window* has passed since it ended: a
  report may name no scope, so only the run itself can recognise it. A terminal single-run update that
  ended longer ago than the window is *stale*: it may have been counted and forgotten, so it is not counted.
- *stale* (single-run updates): older than what is known (a non-terminal update after a later status, or
  anything after the end); *duplicate*: says nothing new.
Each run is counted once across all sources, under the `source` label of the source that first reported it.
"""

from __future__ import annotations

import heapq
import operator
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from exporter import metrics_spec as m
from exporter import statuses
from exporter.aggregates import Aggregates, LabelValues
from exporter.cardinality import OTHER, LabelCaps
from exporter.changeset import ChangeSet
from exporter.finishes import FinishWindows
from exporter.metrics_spec import RATIO_WINDOWS
from exporter.model import RunSnapshot
from exporter.runstate import Changes as Changes
from exporter.runstate import Finish as Finish
from exporter.runstate import Remembered as Remembered
from exporter.runstate import RunState as RunState
from exporter.runstate import ScopeState as ScopeState

_MAX_WINDOW = max(RATIO_WINDOWS.values())
# A new run seen in one of these has not left its first status: nothing ended unobserved.
_BEFORE_START = frozenset({statuses.CREATED, statuses.QUEUED, statuses.UNKNOWN})
# How long a finished run is remembered when single-run updates arrive, so a repeated report of it is known.
# Webhooks are redelivered for up to three days.
DEDUPE_WINDOW = 72 * 3600.0
# Lifecycle order for single-run updates: a report of an earlier rank than what is known is stale.
# in_progress and requires_action alternate, so they share a rank.
_RANK: dict[str, int] = {
    statuses.CREATED: 0, statuses.QUEUED: 1, statuses.IN_PROGRESS: 2, statuses.REQUIRES_ACTION: 2,
    "cancelling": 3, **dict.fromkeys(statuses.TERMINAL, 4),
}

Outcome = Literal["accepted", "duplicate", "stale"]
_RUN_METRIC_NAMES = frozenset(spec.name for spec in m.METRICS if spec.run_metric)
# Remembered runs past the dedupe window leave the table at most this often (one DELETE per minute).
FORGET_INTERVAL = 60.0
_NOTHING: Mapping[str, Remembered] = {}


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
        dedupe_window: float = 0.0,
    ) -> None:
        self.extra_labels = tuple(extra_labels)
        # (source, *extra) read in one call: computed for every index update and every finish.
        names = ["assistant_id" if name == "assistant_id" else "model" for name in self.extra_labels]
        self._raw_labels: Callable[[RunState | RunSnapshot], LabelValues] = (
            operator.attrgetter("source", *names) if names else lambda run: (run.source,))
        self._labels = self._capped_labels if names else self._raw_labels
        self.retention = retention
        self.dedupe_window = max(retention, dedupe_window)
        self.aggregates = aggregates if aggregates is not None else Aggregates()
        self.runs: dict[str, RunState] = {}
        self.scopes: dict[str, ScopeState] = {}  # watched scopes
        # Indexes kept in step with `runs`, so that per-tick views cost O(unfinished runs), not O(runs).
        self._by_scope: dict[str, set[str]] = {}
        self._open: dict[str, set[str]] = {}  # unfinished runs by scope
        self._counts: dict[tuple[str, ...], int] = {}  # (status, *labels) -> runs in assistants_runs
        self._retire_at: list[tuple[float, str]] = []  # heap of (end + retention, run id)
        self._retired: dict[str, set[str]] = {}  # past retention, kept until coverage passes them
        self._forget_at: list[tuple[float, str]] = []  # heap of (end + dedupe window, id) of retired runs
        self._oldest: dict[tuple[str, ...], list[tuple[float, str]]] = {}  # lazy heaps of (stint start, id)
        self._finishes = FinishWindows()
        self.finishes = self._finishes.events  # the longest window's finish events, as persisted
        self.changes = Changes()
        self.caps = LabelCaps()  # --max-assistant-ids etc.; set_limits() before the first run
        self._caps_seeded = False  # the admitted values are rebuilt from the counters on first need
        self._forgot_at = float("-inf")  # when remembered runs past the window were last dropped

    # -- loading and scope membership -------------------------------------------------------

    def restore(self, scopes: Iterable[ScopeState], runs: Iterable[RunState], finishes: Iterable[Finish]) -> None:
        for scope in scopes:
            self.scopes[scope.id] = scope
        self._bulk_index(runs)
        for finish in sorted(finishes, key=lambda f: f.at):
            self._finishes.record(finish)
        self._finishes.new_moment()

    def watch(self, scope_id: str, born: int | None = None) -> None:
        """Watch a scope. `born`: it was created at that time, while the exporter was already watching for
        new scopes (discovery), so none of its runs is history: it counts as swept from its creation on."""
        if scope_id not in self.scopes:
            scope = ScopeState(scope_id) if born is None else ScopeState(scope_id, swept=True, covered=born)
            self.scopes[scope_id] = scope
            self.changes.scopes[scope_id] = scope

    def unwatch(self, scope_id: str) -> None:
        """Stop watching: its runs leave every gauge; counters keep what they counted."""
        self.scopes.pop(scope_id, None)
        for run_id in list(self._by_scope.get(scope_id, ())):
            self._drop(run_id)
        self.changes.scopes.pop(scope_id, None)
        self.changes.deleted_scopes.add(scope_id)

    def labels_of(self, run: RunState | RunSnapshot) -> LabelValues:
        """The run's base and extra label values: (source, *--labels), each past its cap `other`."""
        return self._labels(run)

    def _capped_labels(self, run: RunState | RunSnapshot) -> LabelValues:
        values = self._raw_labels(run)
        caps = self._seeded_caps()
        return (values[0], *(caps.value(name, v)[0] for name, v in zip(self.extra_labels, values[1:], strict=True)))

    def _seeded_caps(self) -> LabelCaps:
        """The caps, their admitted values rebuilt from the loaded counters' label sets (caps hold across
        restarts) and the documented zeros."""
        if not self._caps_seeded:
            self._caps_seeded = True
            for name, values in self.aggregates.counters:
                if name == m.ERRORS.name:
                    self.caps.seed("code", values[:1])
                elif name == m.INCOMPLETE.name:
                    self.caps.seed("reason", values[:1])
                if name in _RUN_METRIC_NAMES:
                    for i, label in enumerate(self.extra_labels):
                        self.caps.seed(label, values[2 + i : 3 + i])
            self.caps.seed("code", m.KNOWN_ERROR_CODES)
            self.caps.seed("reason", m.KNOWN_INCOMPLETE_REASONS)
        return self.caps

    def _overflowed(self, run: RunState, labels: LabelValues) -> None:
        """Count a finished run once for each extra label whose value became `other` at its cap."""
        for name, value in zip(self.extra_labels, labels[1:], strict=True):
            raw = run.assistant_id if name == "assistant_id" else run.model
            if value == OTHER and raw != OTHER:
                self.aggregates.inc(m.LABEL_OVERFLOW.name, (name,))

    def take_changes(self) -> ChangeSet:
        """What the store must write of this tracker: the runs' changes and the aggregates that moved."""
        self._finishes.new_moment()  # its events go to the store now: a later finish makes a new one
        changes, self.changes = self.changes, Changes()
        return ChangeSet(changes, *self.aggregates.take_dirty())

    # -- polling economy ---------------------------------------------------------------------

    def is_active(self, scope_id: str) -> bool:
        return bool(self._open.get(scope_id))

    def last_activity(self) -> dict[str, float]:
        """Scopes with unfinished runs -> when the latest of those runs entered its status (for ranking)."""
        runs = self.runs
        return {scope: max(runs[r].stint_start for r in ids) for scope, ids in self._open.items() if ids}

    def accounted(self, scope_id: str, snap: RunSnapshot, recalled: Mapping[str, Remembered] = _NOTHING) -> bool:
        """True when this run needs no more attention: known terminal, or below the scope's horizon.
        `recalled`: what the state file remembers of these ids (`Store.recall`)."""
        known = self.runs.get(snap.id)
        if known is not None:
            return known.terminal
        if self._remembered(snap.id, recalled) is not None:
            return True
        scope = self.scopes.get(scope_id)
        return scope is not None and snap.created_at <= scope.horizon

    def should_stop(self, scope_id: str, seen: Sequence[RunSnapshot],
                    recalled: Mapping[str, Remembered] = _NOTHING) -> bool:
        """Paging may stop once it re-observed every unfinished run and reached an accounted-for run
        older than what the last successful poll covered (so no page between them went unread)."""
        scope = self.scopes.get(scope_id)
        if scope is None or not scope.swept:
            return False
        seen_ids = {s.id for s in seen}
        if any(r not in seen_ids for r in self._open.get(scope_id, ())):
            return False
        return any(s.created_at < scope.covered and self.accounted(scope_id, s, recalled) for s in seen)

    # -- "do I know this run, and how did it end?" ------------------------------------------

    def unknown(self, run_ids: Iterable[str]) -> list[str]:
        """The ids not in memory nor about to be written as remembered: those to look up in the store."""
        runs, pending = self.runs, self.changes.remembered
        return [i for i in run_ids if i not in runs and i not in pending]

    def known(self, run_ids: Iterable[str], recalled: Mapping[str, Remembered] = _NOTHING) -> dict[str, str]:
        """id -> status, for the ids the exporter knows: unfinished, retained and remembered runs."""
        out: dict[str, str] = {}
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is not None:
                out[run_id] = run.status
            else:
                remembered = self._remembered(run_id, recalled)
                if remembered is not None:
                    out[run_id] = remembered.status
        return out

    def _remembered(self, run_id: str, recalled: Mapping[str, Remembered]) -> Remembered | None:
        return self.changes.remembered.get(run_id) or recalled.get(run_id)

    # -- observations ------------------------------------------------------------------------

    def observe_listing(self, scope_id: str, snaps: Sequence[RunSnapshot], now: float, *, complete: bool,
                        ok: bool, recalled: Mapping[str, Remembered] = _NOTHING) -> None:
        """Apply one listing of one scope. `ok`: the poll succeeded; `complete`: it listed every run.
        `recalled`: what the state file remembers of these ids (`Store.recall`)."""
        self.watch(scope_id)
        scope = self.scopes[scope_id]
        scope.failing = not ok
        if scope.gone:
            scope.gone = False
            self.changes.scopes[scope_id] = scope
        seen: set[str] = set()
        for snap in snaps:
            if snap.id in seen:
                continue
            seen.add(snap.id)
            known = self.runs.get(snap.id)
            if known is None:
                if self._remembered(snap.id, recalled) is None:
                    self._first_sight(scope, snap, now, live=False)
            elif not known.terminal:
                self._update(known, snap, now)
        if complete:
            self._drop_vanished(scope, seen)
        if ok:
            newest = max((s.created_at for s in snaps), default=scope.covered)
            if not scope.swept or newest > scope.covered:
                scope.swept = True
                scope.covered = max(scope.covered, newest)
                self.changes.scopes[scope_id] = scope
                self._release_retired(scope, now)

    def observe_run(self, snap: RunSnapshot, now: float, recalled: Mapping[str, Remembered] = _NOTHING) -> Outcome:
        """Apply one single-run update (push, poll by id, webhook). Idempotent and order-tolerant.
        `recalled`: what the state file remembers of this id (`Store.recall`, in bulk for a request)."""
        known = self.runs.get(snap.id)
        if known is not None:
            return self._update_known(known, snap, now)
        remembered = self._remembered(snap.id, recalled)
        if remembered is not None:
            return self._ended_answer(remembered.status, remembered.ended_at, snap, now)
        if snap.terminal:
            if now - float(snap.ended_at() or now) >= self.dedupe_window:
                return "stale"  # it may have been counted and forgotten since
            scope = self.scopes.get(snap.scope) if snap.scope else None
            if scope is not None and scope.swept and snap.created_at <= scope.horizon:
                return "duplicate"  # accounted for by the scope's listings
        self._first_sight(self.scopes.get(snap.scope) if snap.scope else None, snap, now, live=True)
        return "accepted"

    def _update_known(self, run: RunState, snap: RunSnapshot, now: float) -> Outcome:
        if run.terminal:
            return self._ended_answer(run.status, run.ended_at, snap, now)
        if _RANK.get(snap.status, -1) < _RANK.get(run.status, 0):
            return "stale"
        if (snap.status == run.status and (snap.assistant_id, snap.model) == (run.assistant_id, run.model)
                and (run.started_at is not None or snap.started_at is None)):
            return "duplicate"
        self._update(run, snap, now)
        return "accepted"

    def _ended_answer(self, status: str, ended_at: float | None, snap: RunSnapshot, now: float) -> Outcome:
        """A report of a run known to have ended. Past the dedupe window it is stale whether or not the run
        is still kept (in memory for a listing's coverage, or in the table until the next forget pass), so
        the answer does not depend on when the exporter dropped it."""
        if snap.status != status or (ended_at is not None and now - ended_at >= self.dedupe_window):
            return "stale"
        return "duplicate"

    def vanish(self, run_id: str) -> None:
        """A run fetched by id is gone (404) before it ended: it leaves the gauges, never counted."""
        run = self.runs.get(run_id)
        if run is not None and not run.terminal:
            self._drop(run_id)

    def mark_gone(self, scope_id: str) -> None:
        """The API says the scope does not exist: its unfinished runs can never be seen to end."""
        self.watch(scope_id)
        scope = self.scopes[scope_id]
        scope.gone = True
        scope.failing = False
        self.changes.scopes[scope_id] = scope
        for run_id in list(self._open.get(scope_id, ())):
            self._drop(run_id)

    def _first_sight(self, scope: ScopeState | None, snap: RunSnapshot, now: float, *, live: bool) -> None:
        swept_after = scope is not None and scope.swept and snap.created_at > scope.horizon
        if live and snap.terminal and not snap.created_known:
            # Only its end is known (a webhook event): counted, but no stint or run duration is observed.
            ended = float(snap.ended_at() or now)
            run = RunState(snap.id, snap.scope, snap.status, snap.created_at, ended, snap.assistant_id,
                           snap.model, source=snap.source)
            self._finish(run, snap, now, durations=False)
            self._put(run)
            self.changes.upsert(run)
            return
        if snap.status in _BEFORE_START or (snap.terminal and not (live or swept_after)):
            self._first_sight_unwatched(scope, snap, now, sweeping=not (live or swept_after))
            return
        # Created while we watched, reported live, or still unfinished at the sweep (so it will be counted): it
        # was queued from created_at on, whatever we see now. Its queued stint is observed however late the
        # first poll came, as it is for a run the sweep saw queued.
        run = RunState(snap.id, snap.scope, statuses.QUEUED, snap.created_at, float(snap.created_at),
                       snap.assistant_id, snap.model, source=snap.source)
        if snap.status != statuses.QUEUED:  # indexed once, in the status it is in now
            if snap.started_at is not None:
                run.started_at = snap.started_at
            self._transition(run, snap, now)
        self._put(run)
        self.changes.upsert(run)

    def _first_sight_unwatched(self, scope: ScopeState | None, snap: RunSnapshot, now: float,
                               sweeping: bool = False) -> None:
        if snap.terminal:
            ended = float(snap.ended_at() or snap.created_at)
            if ended + self.retention <= now:
                if scope is not None:
                    self._raise_horizon(scope, snap.created_at)
                return
            run = RunState(snap.id, snap.scope, snap.status, snap.created_at, ended, snap.assistant_id,
                           snap.model, snap.started_at, ended, history=True, source=snap.source)
        else:
            # A status the sweep cannot read may hide a run that had already ended: history until shown live.
            run = RunState(snap.id, snap.scope, snap.status, snap.created_at,
                           _entry_time(snap, now), snap.assistant_id, snap.model, snap.started_at,
                           history=sweeping and snap.status == statuses.UNKNOWN, source=snap.source)
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
            run.assistant_id, run.model = sys.intern(snap.assistant_id), sys.intern(snap.model)
            self.changes.upsert(run)
        if snap.status == run.status:
            return
        if run.history and self._ended_unseen(run, snap):
            return
        labels = self.labels_of(run)
        for stint in _ended_stints(run, snap, now):
            self.aggregates.observe(m.STATUS_DURATION.name, (stint.status, *labels),
                                    max(0.0, stint.end - stint.start))
        first_in_progress = run.status == statuses.QUEUED and snap.status == statuses.IN_PROGRESS
        run.status = sys.intern(snap.status)
        if snap.terminal:
            self._finish(run, snap, now)
        else:
            run.stint_start = float(snap.started_at) if first_in_progress and snap.started_at else now
        self.changes.upsert(run)

    def _ended_unseen(self, run: RunState, snap: RunSnapshot) -> bool:
        """For a run first swept with an unreadable status: True (and it becomes history) if it had ended
        before it was first seen; else it is shown to be live, and counts as usual from now on."""
        run.history = False
        ended = snap.ended_at()
        if not snap.terminal or (ended is not None and ended > run.stint_start):
            self.changes.upsert(run)
            return False
        run.status, run.history = snap.status, True
        run.ended_at = run.stint_start = float(ended) if ended is not None else run.stint_start
        self.changes.upsert(run)
        return True

    def _finish(self, run: RunState, snap: RunSnapshot, now: float, durations: bool = True) -> None:
        ended = float(snap.ended_at() or now)
        run.ended_at = run.stint_start = ended
        labels = self.labels_of(run)
        self._overflowed(run, labels)
        agg = self.aggregates
        agg.inc(m.RUNS_FINISHED.name, (snap.status, *labels))
        if durations:
            agg.observe(m.RUN_DURATION.name, (snap.status, *labels), max(0.0, ended - run.created_at))
        if snap.status == "failed":
            agg.inc(m.ERRORS.name, (self._error_code(snap.error_code or "unknown"), *labels))
        if snap.status == "incomplete":
            agg.inc(m.INCOMPLETE.name, (self._capped("reason", snap.incomplete_reason or "unknown"), *labels))
        if snap.prompt_tokens:
            agg.inc(m.TOKENS.name, ("prompt", *labels), snap.prompt_tokens)
        if snap.completion_tokens:
            agg.inc(m.TOKENS.name, ("completion", *labels), snap.completion_tokens)
        finish = Finish(now, labels, snap.status)
        if self._finishes.record(finish) is finish:  # else counted in an event of this moment, already listed
            self.changes.finishes.append(finish)

    def _error_code(self, code: str) -> str:
        """The code label: error codes are an open set, so past --max-error-codes distinct ones, `other`."""
        return self._capped("code", code)

    def _capped(self, label: str, value: str) -> str:
        capped, overflowed = self._seeded_caps().value(label, value)
        if overflowed:
            self.aggregates.inc(m.LABEL_OVERFLOW.name, (label,))
        return capped

    def _drop_vanished(self, scope: ScopeState, seen: set[str]) -> None:
        """A full listing without a known unfinished run: it was deleted, and can never be seen to end."""
        for run_id in list(self._open.get(scope.id, ())):
            if run_id not in seen:
                self._drop(run_id)  # never counted, so it may count if it ever comes back finished

    # -- time passing ------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget finished runs past retention, and finish events older than the longest ratio window.

    A forgotten run raises its scope's horizon, so seeing it again later never counts it twice."""
        heap = self._retire_at
        while heap and heap[0][0] <= now:
            deadline, run_id = heapq.heappop(heap)
            run = self.runs.get(run_id)
            if run is None or run.ended_at is None or run.ended_at + self.retention != deadline:
                continue  # stale entry
            self._retire(run)
            if self._forgettable(run, now):
                self._forget(run_id)
            elif run.scope not in self.scopes:
                self._remember(run)  # no listing can pass it: only its id must be recognised
            elif self.dedupe_window > self.retention:
                heapq.heappush(self._forget_at, (deadline - self.retention + self.dedupe_window, run_id))
        if now - self._forgot_at >= FORGET_INTERVAL:
            self._forgot_at = now
            self.changes.forget_before = now - self.dedupe_window
        heap = self._forget_at
        while heap and heap[0][0] <= now:
            _, run_id = heapq.heappop(heap)
            run = self.runs.get(run_id)
            if run is not None and self._forgettable(run, now):
                self._forget(run_id)
        cutoff = now - _MAX_WINDOW
        if self._finishes.prune(cutoff):
            self.changes.finishes_before = cutoff

    # -- views for metrics -------------------------------------------------------------------

    def label_sets(self) -> set[LabelValues]:
        """Every (source, *extra) label combination seen: in counters (persisted) and among known runs."""
        n = 1 + len(self.extra_labels)
        found = {key[1:] for key, count in self._counts.items() if count}
        for (name, values) in self.aggregates.counters:
            if name == m.RUNS_FINISHED.name:
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
        return self._finishes.ratios(now)

    def scope_states(self) -> dict[str, int]:
        """Watched scopes by state. A failing one may have unfinished runs: it is failing, not active, because
        what it shows may be stale."""
        out = dict.fromkeys(m.THREAD_STATES, 0)
        for scope in self.scopes.values():
            state = ("gone" if scope.gone else "failing" if scope.failing
                     else "active" if self.is_active(scope.id) else "idle")
            out[state] += 1
        return out

    # -- bookkeeping -------------------------------------------------------------------------

    def _put(self, run: RunState) -> None:
        _intern(run)
        self.runs[run.id] = run
        self._by_scope.setdefault(run.scope, set()).add(run.id)
        self._index(run)

    def _drop(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        self._unindex(run)
        _discard(self._by_scope, run.scope, run_id)
        self.changes.delete(run_id)

    def _index(self, run: RunState) -> None:
        key = (run.status, *self.labels_of(run))
        self._counts[key] = self._counts.get(key, 0) + 1
        if run.ended_at is None:
            self._open.setdefault(run.scope, set()).add(run.id)
            heapq.heappush(self._oldest.setdefault(key, []), (run.stint_start, run.id))
        else:
            heapq.heappush(self._retire_at, (run.ended_at + self.retention, run.id))

    def _bulk_index(self, runs: Iterable[RunState]) -> None:
        """`_put` for a whole load: the heaps are appended to, then ordered once (not one push per run)."""
        counts, by_scope, opened = self._counts, self._by_scope, self._open
        oldest, retire = self._oldest, self._retire_at
        for run in runs:
            _intern(run)
            self.runs[run.id] = run
            by_scope.setdefault(run.scope, set()).add(run.id)
            key = (run.status, *self._labels(run))
            counts[key] = counts.get(key, 0) + 1
            if run.ended_at is None:
                opened.setdefault(run.scope, set()).add(run.id)
                oldest.setdefault(key, []).append((run.stint_start, run.id))
            else:
                retire.append((run.ended_at + self.retention, run.id))
        heapq.heapify(retire)
        for heap in oldest.values():
            heapq.heapify(heap)

    def _unindex(self, run: RunState) -> None:
        if run.id in self._retired.get(run.scope, ()):
            _discard(self._retired, run.scope, run.id)
        else:
            key = (run.status, *self.labels_of(run))
            self._counts[key] -= 1
        _discard(self._open, run.scope, run.id)

    def _retire(self, run: RunState) -> None:
        """Past retention: out of assistants_runs, but kept so it cannot be mistaken for a new run."""
        self._counts[(run.status, *self.labels_of(run))] -= 1
        self._retired.setdefault(run.scope, set()).add(run.id)

    def _remember(self, run: RunState) -> None:
        """A retired run leaves memory for the state file's `remembered` table (in the same commit)."""
        assert run.ended_at is not None
        self._drop(run.id)
        self.changes.remembered[run.id] = Remembered(run.id, run.source, run.status, run.ended_at)

    def _release_retired(self, scope: ScopeState, now: float) -> None:
        for run_id in list(self._retired.get(scope.id, ())):
            if self._forgettable(self.runs[run_id], now):
                self._forget(run_id)

    def _forgettable(self, run: RunState, now: float) -> bool:
        """Below what a successful listing covered, if its scope is watched (an older unseen run could
        hide behind the horizon), and past the dedupe window (a report of it would be stale by then)."""
        scope = self.scopes.get(run.scope)
        if scope is not None and run.created_at >= scope.covered:
            return False
        return run.ended_at is not None and now - run.ended_at >= self.dedupe_window

    def _forget(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return
        scope = self.scopes.get(run.scope)
        if scope is not None:
            self._raise_horizon(scope, run.created_at)
        self._drop(run_id)

    def _raise_horizon(self, scope: ScopeState, created_at: int) -> None:
        if created_at > scope.horizon:
            scope.horizon = created_at
            self.changes.scopes[scope.id] = scope


def _intern(run: RunState) -> None:
    """One copy of each scope, status, assistant, model and source string, shared by all the runs that
    have it (each JSON document or state-file row brings its own copies: a few hundred bytes a run)."""
    intern = sys.intern
    run.scope, run.status, run.source = intern(run.scope), intern(run.status), intern(run.source)
    run.assistant_id, run.model = intern(run.assistant_id), intern(run.model)


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
