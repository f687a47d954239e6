"""SQLite persistence: round trips, atomic commits, label changes, bad files."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from exporter.metrics_spec import RUNS_FINISHED, STATUS_DURATION
from exporter.model import RunSnapshot
from exporter.store import SCHEMA_VERSION, Store, StoreError
from exporter.tracker import Tracker

FIXTURES = Path(__file__).parent / "fixtures"

T0 = 1_700_000_000


def _tracker_with_history(store: Store) -> Tracker:
    tr = Tracker(["assistant_id"], 3600)
    tr.observe_listing("t1", [], T0, complete=True, ok=True)
    runs = [
        RunSnapshot("r1", "t1", "queued", T0 + 1, assistant_id="a1"),
        RunSnapshot("r2", "t1", "failed", T0 + 2, assistant_id="a2", started_at=T0 + 3, failed_at=T0 + 9,
                    error_code="server_error"),
    ]
    tr.observe_listing("t1", runs, T0 + 10, complete=True, ok=True)
    tr.aggregates.inc("assistants_exporter_api_requests_total", ("threads", "list_runs", "200"), 3)
    changes = tr.take_changes()
    changes.meta["last_poll_success"] = "123.5"
    store.commit(changes)
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
    assert after.scopes == before.scopes
    assert after.aggregates.counters == before.aggregates.counters
    assert after.aggregates.histograms == before.aggregates.histograms
    assert list(after.finishes) == list(before.finishes)
    assert Store(path, ["assistant_id"]).load().meta["last_poll_success"] == "123.5"


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    tr = Tracker(["assistant_id"], 3600)
    tr.observe_listing("t1", [], T0, complete=True, ok=True)
    tr.observe_listing("t1", [RunSnapshot("r1", "t1", "completed", T0 + 1, assistant_id="a")], T0 + 2,
               complete=True, ok=True)
    changes = tr.take_changes()
    changes.counters[("no_such_metric", ())] = 1.0  # fails inside the transaction, after the runs were written
    with pytest.raises(KeyError):
        store.commit(changes)
    loaded = store.load()
    assert loaded.runs == [] and loaded.scopes == [] and loaded.aggregates.counters == {}


def test_changing_labels_merges_counts_once_and_for_all(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    _tracker_with_history(store)
    store.close()
    for _ in range(2):  # a second load must not merge the old rows again
        tr = _reload(path, [])
        assert tr.aggregates.counter(RUNS_FINISHED.name, ("failed", "threads")) == 1
        assert tr.aggregates.histograms[(STATUS_DURATION.name, ("queued", "threads"))].count == 1
    tr = _reload(path, ["assistant_id", "model"])
    assert tr.aggregates.counter(RUNS_FINISHED.name, ("failed", "threads", "", "")) == 1


def test_newer_schema_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(path, []).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"s\.db has schema 99, written by a newer version"):
        Store(path, [])


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StoreError, match=r"s\.db.*file is not a database.*move it away"):
        Store(path, [])


# -- migrations ------------------------------------------------------------------------------------


def test_a_schema_1_file_opens_with_its_counters_runs_and_threads_intact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "state-v1.db", path)
    store = Store(path, ["assistant_id"])
    loaded = store.load()
    store.close()
    agg = loaded.aggregates
    assert agg.counter(RUNS_FINISHED.name, ("completed", "threads", "asst_1")) == 1
    assert agg.counter(RUNS_FINISHED.name, ("failed", "threads", "asst_1")) == 1
    assert agg.counter("assistants_run_errors_total", ("server_error", "threads", "asst_1")) == 1
    assert agg.counter("assistants_run_tokens_total", ("prompt", "threads", "asst_1")) == 10
    assert agg.counter("assistants_run_tokens_total", ("completion", "threads", "asst_1")) == 5
    assert agg.counter("assistants_exporter_api_requests_total", ("threads", "list_runs", "200")) == 3
    assert agg.histograms[(STATUS_DURATION.name, ("queued", "threads", "asst_1"))].count == 2
    assert {r.id: (r.status, r.source, r.scope) for r in loaded.runs} == {
        "run_1": ("completed", "threads", "thread_a"), "run_2": ("failed", "threads", "thread_a"),
        "run_3": ("in_progress", "threads", "thread_a")}
    assert [s.id for s in loaded.scopes] == ["thread_a"] and loaded.scopes[0].swept
    assert {f.labels for f in loaded.finishes} == {("threads", "asst_1")}
    assert loaded.meta["schema_version"] == str(SCHEMA_VERSION)
    tracker = loaded.tracker(["assistant_id"], 3600)
    assert tracker.status_counts()[("in_progress", "threads", "asst_2")] == 1
    # Opening it again migrates nothing twice.
    again = Store(path, ["assistant_id"]).load()
    assert again.aggregates.counters == agg.counters


def test_the_fixture_is_really_schema_1() -> None:
    with sqlite3.connect(f"file:{FIXTURES / 'state-v1.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
        assert "thread_id" in [row[1] for row in db.execute("PRAGMA table_info(runs)")]


# -- damaged and foreign files: one line naming the file, never a traceback -------------------------


@pytest.mark.parametrize("version", ["abc", "", "-1", "0"])
def test_an_unreadable_schema_version_is_a_clear_error(tmp_path: Path, version: str) -> None:
    path = tmp_path / "s.db"
    Store(path, []).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    with pytest.raises(StoreError, match=r"s\.db has no valid schema version"):
        Store(path, [])


def test_a_foreign_sqlite_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (x)")
    with pytest.raises(StoreError, match=r"other\.db is an SQLite file but not an assistants-exporter state file"):
        Store(path, [])
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key, value)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    with pytest.raises(StoreError, match=r"not an assistants-exporter state file of schema"):
        Store(path, [])


def test_corruption_found_by_quick_check_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, ["assistant_id"])
    _tracker_with_history(store)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        index_page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'finishes_at'").fetchone()[0]
    data = bytearray(path.read_bytes())
    # Scramble the index's page: every table still reads, so only an integrity check can tell.
    start = page_size * (index_page - 1)
    data[start + 8:start + 64] = bytes(range(56))
    path.write_bytes(bytes(data))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM counters").fetchone()[0] > 0
    with pytest.raises(StoreError, match=r"s\.db is corrupted .*move it away") as caught:
        Store(path, ["assistant_id"])
    assert "\n" not in str(caught.value)


def _state_with_a_finished_run(path: Path) -> None:
    store = Store(path, ["assistant_id"])
    _tracker_with_history(store)
    store.close()


def test_text_in_a_number_column_is_refused_with_the_column_named(tmp_path: Path) -> None:
    """Regression (issue 16): text in runs.ended_at gave a traceback at start."""
    path = tmp_path / "s.db"
    _state_with_a_finished_run(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET ended_at = 'yesterday' WHERE id = 'r2'")
    with pytest.raises(StoreError, match=r"runs\.ended_at holds text where integer or real or null belongs.*move it"):
        Store(path, ["assistant_id"])


def test_a_file_sqlite_opens_read_only_is_refused_at_start(tmp_path: Path) -> None:
    """Regression (issue 16): a write version SQLite does not know (header byte 18) opened read-only, and every
    commit failed for as long as the exporter ran."""
    path = tmp_path / "s.db"
    _state_with_a_finished_run(path)
    header = bytearray(path.read_bytes())
    header[18] = 3
    path.write_bytes(bytes(header))
    with pytest.raises(StoreError, match=r"s\.db cannot be written \(attempt to write a readonly database\)"):
        Store(path, ["assistant_id"])


def test_an_empty_file_is_refused_but_a_missing_one_is_a_fresh_start(tmp_path: Path) -> None:
    """Regression (issue 16): an existing zero-length state file was a silent fresh start."""
    path = tmp_path / "s.db"
    path.touch()
    with pytest.raises(StoreError, match=r"empty \(0 bytes\).*delete it to start fresh"):
        Store(path, ["assistant_id"])
    assert path.stat().st_size == 0  # left as it was
    path.unlink()
    store = Store(path, ["assistant_id"])
    assert store.load().runs == []
    store.close()


def test_the_wal_is_checkpointed_at_a_megabyte_and_cut_back_to_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", [])
    try:
        assert store._db.execute("PRAGMA journal_size_limit").fetchone() == (1 << 20,)
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (256,)
        assert store._db.execute("PRAGMA page_size").fetchone() == (4096,)
    finally:
        store.close()
