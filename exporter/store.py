"""SQLite persistence: the tracker's runs and scopes, the counters and histograms, finish events, and the
scopes registered over the write API.

Each `commit` is one transaction, so a `kill -9` loses at most the last tick's effects, which the next
poll re-observes; a run's count and its terminal status are written together, so none is counted twice.
The schema is versioned; `MIGRATIONS` carries any older file forward, one version at a time, never back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter import storewrites as writes
from exporter.aggregates import Aggregates, Histogram, LabelValues
from exporter.changeset import ChangeSet
from exporter.metrics_spec import SOURCE_LABEL
from exporter.model import SOURCE_THREADS
from exporter.runstate import STATUS_NAMES, Changes, Finish, Remembered, RunState, ScopeState
from exporter.statefile import empty_file, write_problem, wrong_type
from exporter.tracker import Tracker

# The schema every state file starts from; MIGRATIONS take it to SCHEMA_VERSION.
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE threads (
    id TEXT PRIMARY KEY, swept INTEGER NOT NULL, horizon INTEGER NOT NULL, gone INTEGER NOT NULL,
    covered INTEGER NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    stint_start REAL NOT NULL, assistant_id TEXT NOT NULL, model TEXT NOT NULL, started_at INTEGER,
    ended_at REAL, history INTEGER NOT NULL);
CREATE TABLE counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, labels));
CREATE TABLE histograms (
    name TEXT NOT NULL, labels TEXT NOT NULL, bounds TEXT NOT NULL, counts TEXT NOT NULL,
    sum REAL NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (name, labels));
CREATE TABLE finishes (at REAL NOT NULL, labels TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX finishes_at ON finishes (at);
"""

# Schema 1 metric names whose stored labels gain `source` in schema 2 (frozen: not the current table).
_V1_SOURCED = frozenset({
    "assistants_runs_finished_total", "assistants_run_status_duration_seconds",
    "assistants_run_duration_seconds", "assistants_run_errors_total", "assistants_run_incomplete_total",
    "assistants_run_tokens_total", "assistants_exporter_api_requests_total",
})


def _add_source_label(labels: str) -> str:
    decoded = json.loads(labels)
    decoded.setdefault(SOURCE_LABEL, SOURCE_THREADS)
    return json.dumps(decoded, sort_keys=True)


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Scopes instead of threads, a `source` per run and on every run metric, and registrations."""
    db.execute("ALTER TABLE threads RENAME TO scopes")
    db.execute("ALTER TABLE runs RENAME COLUMN thread_id TO scope")
    db.execute(f"ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT '{SOURCE_THREADS}'")
    db.execute("CREATE TABLE registrations (scope TEXT PRIMARY KEY, source TEXT NOT NULL)")
    for table in ("counters", "histograms"):
        rows = db.execute(f"SELECT name, labels FROM {table}").fetchall()
        db.executemany(f"UPDATE {table} SET labels = ? WHERE name = ? AND labels = ?",
                       ((_add_source_label(labels), name, labels) for name, labels in rows if name in _V1_SOURCED))
    rows = db.execute("SELECT rowid, labels FROM finishes").fetchall()
    db.executemany("UPDATE finishes SET labels = ? WHERE rowid = ?",
                   ((_add_source_label(labels), rowid) for rowid, labels in rows))


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Scopes found by discovery, with their creation time (they leave the watch list after the lookback)."""
    db.execute("CREATE TABLE discovered (scope TEXT PRIMARY KEY, source TEXT NOT NULL, created_at INTEGER NOT NULL)")


def _migrate_webhooks(db: sqlite3.Connection) -> None:
    """Webhook deliveries seen (dedupe by webhook-id for 72 h), and terminal events whose response is being
    fetched for its details (counted from the event alone if that fetch fails)."""
    db.execute("CREATE TABLE webhook_deliveries (id TEXT PRIMARY KEY, at REAL NOT NULL)")
    db.execute("CREATE TABLE webhook_pending (id TEXT PRIMARY KEY, status TEXT NOT NULL, ended_at INTEGER NOT NULL)")


def _migrate_remembered(db: sqlite3.Connection) -> None:
    """Finished runs past retention that no listing can pass leave memory for this table: only their id,
    source, terminal status (a small int) and end are kept, to recognise a repeated report. Clustered on
    the id (WITHOUT ROWID: one B-tree, no rowid table beside it); the end, in whole seconds (a varint of
    4 bytes, not an 8-byte REAL, in the row and in the index: the API's ends are whole seconds), is indexed to
    drop the runs past
    the dedupe window. The schema-4 runs that belong here move on the first expiry after the load (which
    knows --terminal-retention and the time), in that commit."""
    db.execute("CREATE TABLE remembered (id TEXT PRIMARY KEY, source TEXT NOT NULL, status INTEGER NOT NULL, "
               "ended_at INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("CREATE INDEX remembered_ended_at ON remembered (ended_at)")
    # Finish events of one moment, label set and status are one row with a count. (A file without the
    # table is not ours: the column check after the migrations says so.)
    columns = [row[1] for row in db.execute("PRAGMA table_info(finishes)")]
    if columns and "count" not in columns:
        db.execute("ALTER TABLE finishes ADD COLUMN count INTEGER NOT NULL DEFAULT 1")


# MIGRATIONS[n] takes a schema-n file to schema n + 1, inside one transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_webhooks, 4: _migrate_remembered,
}
# Ids per `Store.recall` query: under SQLite's default limit of host parameters (32,766 since 3.32; 999 before).
RECALL_CHUNK = 900
SCHEMA_VERSION = 1 + len(MIGRATIONS)

# The columns each table must have at SCHEMA_VERSION: anything else is not our file.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "scopes": ("id", "swept", "horizon", "gone", "covered"),
    "runs": ("id", "scope", "status", "created_at", "stint_start", "assistant_id", "model", "started_at",
             "ended_at", "history", "source"),
    "counters": ("name", "labels", "value"),
    "histograms": ("name", "labels", "bounds", "counts", "sum", "count"),
    "finishes": ("at", "labels", "status", "count"),
    "registrations": ("scope", "source"),
    "discovered": ("scope", "source", "created_at"),
    "webhook_deliveries": ("id", "at"),
    "webhook_pending": ("id", "status", "ended_at"),
    "remembered": ("id", "source", "status", "ended_at"),
}


class StoreError(Exception):
    """The state file cannot be used; the message names the file and the reason."""


@dataclass(slots=True)
class Loaded:
    scopes: list[ScopeState] = field(default_factory=list)
    runs: list[RunState] = field(default_factory=list)
    finishes: list[Finish] = field(default_factory=list)
    aggregates: Aggregates = field(default_factory=Aggregates)
    registrations: dict[str, str] = field(default_factory=dict)  # scope -> source
    discovered: dict[str, tuple[str, int]] = field(default_factory=dict)  # scope -> (source, created_at)
    meta: dict[str, str] = field(default_factory=dict)
    deliveries: dict[str, float] = field(default_factory=dict)  # webhook-id -> when it arrived
    pending: dict[str, tuple[str, int]] = field(default_factory=dict)  # response id -> (status, ended_at)

    def tracker(self, extra_labels: Sequence[str], retention: float, dedupe_window: float = 0.0) -> Tracker:
        """A tracker that carries on from this state."""
        tracker = Tracker(extra_labels, retention, self.aggregates, dedupe_window)
        tracker.restore(self.scopes, self.runs, self.finishes)
        return tracker


def _project(names: Sequence[str], encoded: str) -> LabelValues:
    """Stored labels onto the current label set, so a change of --labels keeps (merges) the counts."""
    stored = json.loads(encoded)
    return tuple(str(stored.get(n, "")) for n in names)


_RESTART_HINT = "move it away to start with empty state (see the runbook: 'State file corrupted or lost')"
# The WAL is checkpointed once it holds this much (SQLite's default is 4 MB, more than a small volume may have
# free) and cut back to this size whenever it is reset, so an old WAL never holds a small volume full.
JOURNAL_SIZE_LIMIT = 1 << 20
_PAGE_SIZE = 4096


class Store:
    def __init__(self, path: Path, extra_labels: Sequence[str]) -> None:
        self.path = path
        self.extra_labels = tuple(extra_labels)
        if empty_file(path):
            raise StoreError(f"state file {path} is empty (0 bytes), so the state it held is lost; "
                             "delete it to start fresh with empty state")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc
        try:
            self._open()
        except StoreError:
            self._db.close()
            raise
        except (sqlite3.Error, ValueError, UnicodeError, OSError) as exc:
            self._db.close()
            raise StoreError(f"cannot use state file {path}: {exc}; {_RESTART_HINT}") from exc
        # Look-ups from the loop use their own connection: in WAL mode it reads the last commit while the
        # writer thread writes the next one on `_db`, and never waits for it.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def _open(self) -> None:
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            detail = "; ".join(" ".join(str(row[0]).split()) for row in check[:3])  # one line
            raise StoreError(f"state file {self.path} is corrupted ({detail}); {_RESTART_HINT}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        db.execute(f"PRAGMA wal_autocheckpoint={JOURNAL_SIZE_LIMIT // _PAGE_SIZE}")
        version = self._version()
        if version > SCHEMA_VERSION:
            raise StoreError(f"state file {self.path} has schema {version}, written by a newer version; "
                             f"this version reads schemas up to {SCHEMA_VERSION}")
        for from_version in range(version, SCHEMA_VERSION):
            self._transaction(functools.partial(self._migrate, from_version))
        self._check_columns()
        problem = wrong_type(self._db, _COLUMNS)
        if problem is not None:
            raise StoreError(f"state file {self.path}: {problem}; {_RESTART_HINT}")
        problem = write_problem(self._db)
        if problem is not None:
            raise StoreError(f"state file {self.path} cannot be written ({problem}); check its permissions, or "
                             f"{_RESTART_HINT}")

    def _version(self) -> int:
        """The file's schema version; a new, empty file is given schema 1 first."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            def create() -> None:
                for statement in filter(str.strip, _SCHEMA_V1.split(";")):
                    self._db.execute(statement)
                self._db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
                self._db.execute("INSERT INTO meta VALUES ('extra_labels', ?)", (",".join(self.extra_labels),))
            self._transaction(create)
            return 1
        if "meta" not in tables:
            raise StoreError(f"{self.path} is an SQLite file but not an assistants-exporter state file "
                             "(no meta table); use another --state-file")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        text = str(row[0]) if row is not None else ""
        if not text.isdigit() or int(text) < 1:
            raise StoreError(f"state file {self.path} has no valid schema version ({text[:20]!r}); {_RESTART_HINT}")
        return int(text)

    def _migrate(self, from_version: int) -> None:
        MIGRATIONS[from_version](self._db)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(from_version + 1),))

    def _check_columns(self) -> None:
        for table, columns in _COLUMNS.items():
            found = tuple(row[1] for row in self._db.execute(f"PRAGMA table_info({table})"))
            if found != columns:
                raise StoreError(f"{self.path} is not an assistants-exporter state file of schema "
                                 f"{SCHEMA_VERSION} (table {table!r} differs); use another --state-file")

    def checkpoint(self) -> None:
        """After a failed commit: copy the WAL into the file and truncate it. A WAL that filled a small volume
        is never checkpointed otherwise (that happens only after a commit succeeds), so writes could not
        resume even once space is freed."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _transaction(self, work: Callable[[], None]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            work()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> Loaded:
        try:
            loaded = self._load()
            if loaded.meta.get("extra_labels", "") != ",".join(self.extra_labels):
                self._rewrite(loaded)
            return loaded
        except (sqlite3.Error, ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc}; {_RESTART_HINT}") from exc

    def _rewrite(self, loaded: Loaded) -> None:
        """--labels changed: store the merged, re-labelled rows so that no row is merged twice."""
        self.write([
            *writes.delete_all(("counters", "histograms", "finishes")),
            *writes.aggregates(loaded.aggregates.counters, loaded.aggregates.histograms, self.extra_labels),
            *writes.finishes(Changes(finishes=loaded.finishes), self.extra_labels),
            ("INSERT OR REPLACE INTO meta VALUES ('extra_labels', ?)", [(",".join(self.extra_labels),)]),
        ])

    def _load(self) -> Loaded:
        out = Loaded()
        db = self._db
        out.meta = dict(db.execute("SELECT key, value FROM meta"))
        out.scopes = [
            ScopeState(i, bool(s), h, bool(g), c) for i, s, h, g, c in db.execute("SELECT * FROM scopes")
        ]
        out.runs = [
            RunState(i, t, st, c, ss, a, m, sa, e, bool(h), src)
            for i, t, st, c, ss, a, m, sa, e, h, src in db.execute("SELECT * FROM runs")
        ]
        for name, labels, value in db.execute("SELECT name, labels, value FROM counters"):
            out.aggregates.inc(name, _project(writes.label_names(name, self.extra_labels), labels), value)
        for name, labels, bounds, counts, total, count in db.execute("SELECT * FROM histograms"):
            hist = Histogram(tuple(json.loads(bounds)), list(json.loads(counts)), total, count)
            key = (name, _project(writes.label_names(name, self.extra_labels), labels))
            existing = out.aggregates.histograms.get(key)
            if existing is None:
                out.aggregates.histograms[key] = hist
            elif existing.bounds == hist.bounds:
                existing.merge(hist)
        out.aggregates.take_dirty()
        names = writes.finish_label_names(self.extra_labels)
        out.finishes = [
            Finish(at, _project(names, labels), status, count)
            for at, labels, status, count in db.execute("SELECT at, labels, status, count FROM finishes ORDER BY at")
        ]
        out.registrations = dict(db.execute("SELECT scope, source FROM registrations"))
        out.discovered = {scope: (source, created) for scope, source, created
                          in db.execute("SELECT scope, source, created_at FROM discovered")}
        out.deliveries = dict(db.execute("SELECT id, at FROM webhook_deliveries"))
        out.pending = {i: (st, e) for i, st, e in db.execute("SELECT id, status, ended_at FROM webhook_pending")}
        return out

    def recall(self, run_ids: Sequence[str]) -> dict[str, Remembered]:
        """What the `remembered` table holds of these ids: one query per RECALL_CHUNK ids."""
        out: dict[str, Remembered] = {}
        for start in range(0, len(run_ids), RECALL_CHUNK):
            chunk = run_ids[start:start + RECALL_CHUNK]
            marks = ",".join("?" * len(chunk))
            for run_id, source, status, ended_at in self._reader.execute(
                    f"SELECT id, source, status, ended_at FROM remembered WHERE id IN ({marks})", chunk):
                out[run_id] = Remembered(run_id, source, STATUS_NAMES.get(status, "completed"), ended_at)
        return out

    def remembered_count(self) -> int:
        return int(self._reader.execute("SELECT count(*) FROM remembered").fetchone()[0])

    # -- writing -----------------------------------------------------------------------------

    def commit(self, changes: ChangeSet) -> None:
        """Write one change set atomically. Raises sqlite3.Error or OSError (a full disk, a locked file);
        nothing is written then."""
        self.write(self.prepare(changes))

    def prepare(self, changes: ChangeSet) -> writes.Statements:
        """The statements that write this change set, holding copies of its values (see storewrites.py)."""
        return writes.statements(changes, self.extra_labels)

    def write(self, statements: writes.Statements) -> None:
        """Run prepared statements in one transaction: all or nothing. Raises sqlite3.Error or OSError."""
        def work() -> None:
            for sql, rows in statements:
                self._db.executemany(sql, rows)
        self._transaction(work)
