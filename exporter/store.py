"""SQLite persistence: the tracker's runs and threads, the counters and histograms, finish events.

Each `commit` is one transaction, so a `kill -9` loses at most the last poll's effects, which the next
poll re-observes; a run's count and its terminal status are written together, so none is counted twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter.aggregates import Aggregates, Histogram, Key, LabelValues
from exporter.metrics_spec import spec
from exporter.tracker import Changes, Finish, RunState, ThreadState, Tracker

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY, swept INTEGER NOT NULL, horizon INTEGER NOT NULL, gone INTEGER NOT NULL,
    covered INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    stint_start REAL NOT NULL, assistant_id TEXT NOT NULL, model TEXT NOT NULL, started_at INTEGER,
    ended_at REAL, history INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, labels));
CREATE TABLE IF NOT EXISTS histograms (
    name TEXT NOT NULL, labels TEXT NOT NULL, bounds TEXT NOT NULL, counts TEXT NOT NULL,
    sum REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (name, labels));
CREATE TABLE IF NOT EXISTS finishes (at REAL NOT NULL, labels TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS finishes_at ON finishes (at);
"""


class StoreError(Exception):
    """The state file cannot be used; the message names the file and the reason."""


@dataclass(slots=True)
class Loaded:
    threads: list[ThreadState] = field(default_factory=list)
    runs: list[RunState] = field(default_factory=list)
    finishes: list[Finish] = field(default_factory=list)
    aggregates: Aggregates = field(default_factory=Aggregates)
    meta: dict[str, str] = field(default_factory=dict)

    def tracker(self, extra_labels: Sequence[str], retention: float) -> Tracker:
        """A tracker that carries on from this state."""
        tracker = Tracker(extra_labels, retention, self.aggregates)
        tracker.restore(self.threads, self.runs, self.finishes)
        return tracker


def label_names(name: str, extra_labels: Sequence[str]) -> tuple[str, ...]:
    s = spec(name)
    return (*s.labels, *extra_labels) if s.run_metric else s.labels


def _encode(names: Sequence[str], values: LabelValues) -> str:
    return json.dumps(dict(zip(names, values, strict=True)), sort_keys=True)


def _project(names: Sequence[str], encoded: str) -> LabelValues:
    """Stored labels onto the current label set, so a change of --labels keeps (merges) the counts."""
    stored = json.loads(encoded)
    return tuple(str(stored.get(n, "")) for n in names)


class Store:
    def __init__(self, path: Path, extra_labels: Sequence[str]) -> None:
        self.path = path
        self.extra_labels = tuple(extra_labels)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use state file {path}: {exc}") from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._db.execute("INSERT INTO meta VALUES ('extra_labels', ?)", (",".join(self.extra_labels),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"state file {self.path} has schema {row[0]}, this version reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> Loaded:
        try:
            loaded = self._load()
            if loaded.meta.get("extra_labels", "") != ",".join(self.extra_labels):
                self._rewrite(loaded)
            return loaded
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc}") from exc

    def _rewrite(self, loaded: Loaded) -> None:
        """--labels changed: store the merged, re-labelled rows so that no row is merged twice."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM counters")
        db.execute("DELETE FROM histograms")
        db.execute("DELETE FROM finishes")
        self._write_aggregates(dict(loaded.aggregates.counters), dict(loaded.aggregates.histograms))
        self._write_finishes(Changes(finishes=loaded.finishes))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('extra_labels', ?)", (",".join(self.extra_labels),))
        db.execute("COMMIT")

    def _load(self) -> Loaded:
        out = Loaded()
        db = self._db
        out.meta = dict(db.execute("SELECT key, value FROM meta"))
        out.threads = [
            ThreadState(i, bool(s), h, bool(g), c) for i, s, h, g, c in db.execute("SELECT * FROM threads")
        ]
        out.runs = [
            RunState(i, t, st, c, ss, a, m, sa, e, bool(h))
            for i, t, st, c, ss, a, m, sa, e, h in db.execute("SELECT * FROM runs")
        ]
        for name, labels, value in db.execute("SELECT name, labels, value FROM counters"):
            out.aggregates.inc(name, _project(label_names(name, self.extra_labels), labels), value)
        for name, labels, bounds, counts, total, count in db.execute("SELECT * FROM histograms"):
            hist = Histogram(tuple(json.loads(bounds)), list(json.loads(counts)), total, count)
            key = (name, _project(label_names(name, self.extra_labels), labels))
            existing = out.aggregates.histograms.get(key)
            if existing is None:
                out.aggregates.histograms[key] = hist
            elif existing.bounds == hist.bounds:
                existing.merge(hist)
        out.aggregates.take_dirty()
        out.finishes = [
            Finish(at, _project(self.extra_labels, labels), status)
            for at, labels, status in db.execute("SELECT at, labels, status FROM finishes ORDER BY at")
        ]
        return out

    # -- writing -----------------------------------------------------------------------------

    def commit(
        self,
        changes: Changes,
        counters: dict[Key, float],
        histograms: dict[Key, Histogram],
        meta: dict[str, str] | None = None,
    ) -> None:
        """Write one apply's effects atomically."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            self._write_runs(changes)
            self._write_threads(changes)
            self._write_aggregates(counters, histograms)
            self._write_finishes(changes)
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _write_runs(self, changes: Changes) -> None:
        self._db.executemany("DELETE FROM runs WHERE id = ?", ((i,) for i in changes.deleted_runs))
        self._db.executemany(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (r.id, r.thread_id, r.status, r.created_at, r.stint_start, r.assistant_id, r.model,
                 r.started_at, r.ended_at, int(r.history))
                for r in changes.runs.values()
            ),
        )

    def _write_threads(self, changes: Changes) -> None:
        self._db.executemany("DELETE FROM threads WHERE id = ?", ((i,) for i in changes.deleted_threads))
        self._db.executemany(
            "INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?, ?)",
            ((t.id, int(t.swept), t.horizon, int(t.gone), t.covered) for t in changes.threads.values()),
        )

    def _write_aggregates(self, counters: dict[Key, float], histograms: dict[Key, Histogram]) -> None:
        names = self.extra_labels
        self._db.executemany(
            "INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
            ((n, _encode(label_names(n, names), v), value) for (n, v), value in counters.items()),
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
            (
                (n, _encode(label_names(n, names), v), json.dumps(h.bounds), json.dumps(h.counts), h.sum, h.count)
                for (n, v), h in histograms.items()
            ),
        )

    def _write_finishes(self, changes: Changes) -> None:
        if changes.finishes_before is not None:
            self._db.execute("DELETE FROM finishes WHERE at < ?", (changes.finishes_before,))
        self._db.executemany(
            "INSERT INTO finishes VALUES (?, ?, ?)",
            ((f.at, _encode(self.extra_labels, f.labels), f.status) for f in changes.finishes),
        )
