"""What one commit writes: every owner of persisted state hands the store its part as a `ChangeSet`
(`Tracker.take_changes`, `WatchList.take_changes`, `DeliveryLog.take_changes`, the daemon's meta), and the
parts are merged into one. A commit that fails keeps its change set and merges later ones into it.

Persisting something new: a field here, filled by its owner's `take_changes`, and its writer in the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from exporter.aggregates import Histogram, Key
from exporter.runstate import Changes


@dataclass(slots=True)
class ChangeSet:
    """Dict fields map a key to its new value, None to delete it; the newer value of a key wins."""

    runs: Changes = field(default_factory=Changes)  # the tracker's runs, scopes, finish events, remembered runs
    counters: dict[Key, float] = field(default_factory=dict)  # the tracker's aggregates that moved
    histograms: dict[Key, Histogram] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    registrations: dict[str, str | None] = field(default_factory=dict)  # scope -> source
    discovered: dict[str, tuple[str, int] | None] = field(default_factory=dict)  # scope -> (source, created_at)
    deliveries: dict[str, float | None] = field(default_factory=dict)  # webhook-id -> when it arrived
    pending: dict[str, tuple[str, int] | None] = field(default_factory=dict)  # response id -> (status, ended_at)

    def merge(self, newer: ChangeSet) -> ChangeSet:
        """Fold a later change set into this one; returns self."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(newer, f.name)
            if isinstance(mine, dict):
                mine.update(theirs)
            else:
                mine.merge(theirs)
        return self
