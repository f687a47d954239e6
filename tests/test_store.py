"""SQLite persistence: round trips, atomic commits, label changes, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from exporter.model import RunSnapshot
from exporter.store import Store, StoreError
from exporter.tracker import FINISHED, STATUS_DURATION, Tracker

T0 = 1_700_000_000


def _tracker_with_history(store: Store) -> Tracker:
    tr = Tracker(["assistant_id"], 3600)
    tr.observe("t1", [], T0, complete=True, ok=True)
    runs = [
        RunSnapshot("r1", "t1", "queued", T0 + 1, assistant_id="a1"),
        RunSnapshot("r2", "t1", "failed", T0 + 2, assistant_id="a2", started_at=T0 + 3, failed_at=T0 + 9,
                    error_code="server_error"),
    ]
    tr.observe("t1", runs, T0 + 10, complete=True, ok=True)
    tr.aggregates.inc("assistants_exporter_api_requests_total", ("list_runs", "200"), 3)
    counters, hists = tr.aggregates.take_dirty()
    store.commit(tr.take_changes(), counters, hists, {"last_poll_success": "123.5"})
    return tr


def _reload(path: Path, labels: list[str]) -> Tracker:
    store = Store(path, labels)
    loaded = store.load()
    store.close()
    tr = loaded.tracker(labels, 3600)
    return tr


def test_round_trip_restores_runs_threads_counters_histograms_and_finishes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    before = _tracker_with_history(store)
    store.close()
    after = _reload(path, ["assistant_id"])
    assert after.runs == before.runs
    assert after.threads == before.threads
    assert after.aggregates.counters == before.aggregates.counters
    assert after.aggregates.histograms == before.aggregates.histograms
    assert list(after.finishes) == list(before.finishes)
    assert Store(path, ["assistant_id"]).load().meta["last_poll_success"] == "123.5"


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    tr = Tracker(["assistant_id"], 3600)
    tr.observe("t1", [], T0, complete=True, ok=True)
    tr.observe("t1", [RunSnapshot("r1", "t1", "completed", T0 + 1, assistant_id="a")], T0 + 2,
               complete=True, ok=True)
    counters, hists = tr.aggregates.take_dirty()
    counters[("no_such_metric", ())] = 1.0  # fails inside the transaction, after the runs were written
    with pytest.raises(KeyError):
        store.commit(tr.take_changes(), counters, hists)
    loaded = store.load()
    assert loaded.runs == [] and loaded.threads == [] and loaded.aggregates.counters == {}


def test_changing_labels_merges_counts_once_and_for_all(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    _tracker_with_history(store)
    store.close()
    for _ in range(2):  # a second load must not merge the old rows again
        tr = _reload(path, [])
        assert tr.aggregates.counter(FINISHED, ("failed",)) == 1
        assert tr.aggregates.histograms[(STATUS_DURATION, ("queued",))].count == 1
    tr = _reload(path, ["assistant_id", "model"])
    assert tr.aggregates.counter(FINISHED, ("failed", "", "")) == 1


def test_newer_schema_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path, []).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"s\.db has schema 99"):
        Store(path, [])


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StoreError, match="cannot use state file"):
        Store(path, [])
