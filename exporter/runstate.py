"""What the tracker knows about runs and scopes, and the changes the store writes for one apply.

Three kinds of runs, each kept only as much as its job needs:
- *unfinished* and *retained* runs (finished within --terminal-retention) are `RunState`s in the tracker;
- *remembered* runs (past retention, inside the dedupe window, of a scope nobody lists) only have to be
  recognised by id: they live in the state file's `remembered` table (`Remembered` rows), looked up in bulk
  (`Store.recall`, one query per request or page) and passed into the tracker, not in process memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter import statuses
from exporter.aggregates import LabelValues
from exporter.model import SOURCE_THREADS

# Terminal statuses as small ints in the `remembered` table (stable: stored on disk; only append).
STATUS_CODES: dict[str, int] = {
    s: i for i, s in enumerate(("cancelled", "failed", "completed", "incomplete", "expired"))
}
STATUS_NAMES: dict[int, str] = {i: s for s, i in STATUS_CODES.items()}


@dataclass(frozen=True, slots=True)
class Remembered:
    """A finished run past retention, kept only to answer "do I know it, and how did it end?"."""

    id: str
    source: str
    status: str
    ended_at: float


@dataclass(slots=True)
class RunState:
    id: str
    scope: str
    status: str
    created_at: int
    stint_start: float  # when the current status began: API time where known, else observation time
    assistant_id: str = ""
    model: str = ""
    started_at: int | None = None
    ended_at: float | None = None  # terminal runs: drives retention
    history: bool = False
    source: str = SOURCE_THREADS

    @property
    def terminal(self) -> bool:
        return self.status in statuses.TERMINAL


@dataclass(slots=True)
class ScopeState:
    id: str
    swept: bool = False  # one full poll succeeded: from now on unseen terminal runs are new
    horizon: int = -1
    gone: bool = False
    # Newest created_at that a successful poll read down from: every run created before it has been seen.
    # A failed poll may have read only the newest pages, so it does not move this.
    covered: int = -1
    failing: bool = False  # its last poll failed (not persisted: the next poll after a restart says again)


@dataclass(slots=True)
class Finish:
    """Runs of one label set that finished with one status at one moment: counted together, so that a
    burst of pushes is a few events in memory and in the state file, not one per run."""

    at: float  # when the exporter counted it
    labels: LabelValues
    status: str
    count: int = 1


@dataclass(slots=True)
class Changes:
    """What the store must write for one apply, in one transaction."""

    runs: dict[str, RunState] = field(default_factory=dict)
    deleted_runs: set[str] = field(default_factory=set)
    scopes: dict[str, ScopeState] = field(default_factory=dict)
    deleted_scopes: set[str] = field(default_factory=set)
    finishes: list[Finish] = field(default_factory=list)
    finishes_before: float | None = None  # prune finish events older than this
    remembered: dict[str, Remembered] = field(default_factory=dict)  # runs that leave memory for the table
    forget_before: float | None = None  # remembered runs that ended before this leave the table

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.deleted_runs
            or self.scopes
            or self.deleted_scopes
            or self.finishes
            or self.finishes_before is not None
            or self.remembered
            or self.forget_before is not None
        )

    def merge(self, newer: Changes) -> None:
        """Fold a later set of changes into this one (a commit that failed is retried with both)."""
        for run_id in newer.deleted_runs:
            self.delete(run_id)
        for run in newer.runs.values():
            self.upsert(run)
        for scope_id in newer.deleted_scopes:
            self.scopes.pop(scope_id, None)
            self.deleted_scopes.add(scope_id)
        for scope in newer.scopes.values():
            self.scopes[scope.id] = scope
            self.deleted_scopes.discard(scope.id)
        self.finishes.extend(newer.finishes)
        if newer.finishes_before is not None:
            self.finishes_before = max(self.finishes_before or newer.finishes_before, newer.finishes_before)
        self.remembered.update(newer.remembered)
        if newer.forget_before is not None:
            self.forget_before = max(self.forget_before or newer.forget_before, newer.forget_before)

    def upsert(self, run: RunState) -> None:
        self.runs[run.id] = run
        self.deleted_runs.discard(run.id)

    def delete(self, run_id: str) -> None:
        self.runs.pop(run_id, None)
        self.deleted_runs.add(run_id)
