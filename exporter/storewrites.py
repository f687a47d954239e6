"""The SQL statements that write one change set, with every value copied out of the live state.

They are built on the loop, where the tracker's runs and histograms live, and run by the store's writer thread
(exporter/committer.py): the loop may change a run or a histogram while the writer works, so a statement
holds only values (numbers, strings), never a live object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from exporter.aggregates import Histogram, Key, LabelValues
from exporter.changeset import ChangeSet
from exporter.metrics_spec import SOURCE_LABEL, spec
from exporter.runstate import STATUS_CODES, Changes

Row: TypeAlias = tuple[object, ...]
# (sql, rows): run with executemany, in order, in one transaction.
Statements: TypeAlias = list[tuple[str, list[Row]]]

# ChangeSet fields written as rows keyed by their first column -> (table, key column).
KEYED: dict[str, tuple[str, str]] = {
    "registrations": ("registrations", "scope"), "discovered": ("discovered", "scope"),
    "deliveries": ("webhook_deliveries", "id"), "pending": ("webhook_pending", "id"),
}


def label_names(name: str, extra_labels: Sequence[str]) -> tuple[str, ...]:
    return spec(name).label_names(tuple(extra_labels))


def encode_labels(names: Sequence[str], values: LabelValues) -> str:
    return json.dumps(dict(zip(names, values, strict=True)), sort_keys=True)


def finish_label_names(extra_labels: Sequence[str]) -> tuple[str, ...]:
    return (SOURCE_LABEL, *extra_labels)


def statements(changes: ChangeSet, extra_labels: Sequence[str]) -> Statements:
    """Everything one commit writes."""
    out: Statements = []
    out += runs(changes.runs)
    out += remembered(changes.runs)
    out += scopes(changes.runs)
    out += aggregates(changes.counters, changes.histograms, extra_labels)
    out += finishes(changes.runs, extra_labels)
    for name, (table, key) in KEYED.items():
        out += keyed(table, key, getattr(changes, name))
    out.append(("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(changes.meta.items())))
    return [(sql, rows) for sql, rows in out if rows]


def runs(changes: Changes) -> Statements:
    return [
        ("DELETE FROM runs WHERE id = ?", [(i,) for i in changes.deleted_runs]),
        ("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         [(r.id, r.scope, r.status, r.created_at, r.stint_start, r.assistant_id, r.model, r.started_at,
           r.ended_at, int(r.history), r.source) for r in changes.runs.values()]),
    ]


def remembered(changes: Changes) -> Statements:
    out: Statements = []
    if changes.forget_before is not None:
        out.append(("DELETE FROM remembered WHERE ended_at < ?", [(changes.forget_before,)]))
    out.append(("INSERT OR REPLACE INTO remembered VALUES (?, ?, ?, ?)",
                [(r.id, r.source, STATUS_CODES[r.status], int(r.ended_at)) for r in changes.remembered.values()]))
    return out


def scopes(changes: Changes) -> Statements:
    return [
        ("DELETE FROM scopes WHERE id = ?", [(i,) for i in changes.deleted_scopes]),
        ("INSERT OR REPLACE INTO scopes VALUES (?, ?, ?, ?, ?)",
         [(t.id, int(t.swept), t.horizon, int(t.gone), t.covered) for t in changes.scopes.values()]),
    ]


def keyed(table: str, key: str, items: Mapping[str, object]) -> Statements:
    """Rows keyed by their first column: a value (a tuple for several columns) replaces the row; None deletes
    it."""
    rows: list[Row] = [(k, *v) if isinstance(v, tuple) else (k, v) for k, v in items.items() if v is not None]
    marks = ", ".join("?" * len(rows[0])) if rows else ""
    return [
        (f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k, v in items.items() if v is None]),
        (f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows),
    ]


def aggregates(counters: Mapping[Key, float], histograms: Mapping[Key, Histogram],
               extra_labels: Sequence[str]) -> Statements:
    return [
        ("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
         [(n, encode_labels(label_names(n, extra_labels), v), value) for (n, v), value in counters.items()]),
        ("INSERT OR REPLACE INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
         [(n, encode_labels(label_names(n, extra_labels), v), json.dumps(h.bounds), json.dumps(h.counts), h.sum,
           h.count) for (n, v), h in histograms.items()]),
    ]


def finishes(changes: Changes, extra_labels: Sequence[str]) -> Statements:
    out: Statements = []
    if changes.finishes_before is not None:
        out.append(("DELETE FROM finishes WHERE at < ?", [(changes.finishes_before,)]))
    names = finish_label_names(extra_labels)
    out.append(("INSERT INTO finishes VALUES (?, ?, ?, ?)",
                [(f.at, encode_labels(names, f.labels), f.status, f.count) for f in changes.finishes]))
    return out


def delete_all(tables: Iterable[str]) -> Statements:
    return [(f"DELETE FROM {table}", [()]) for table in tables]
