"""The webhook tables of the state file (schema 4): delivery ids and held events survive a restart, removals
are written, and a schema-3 file gains the tables with everything else intact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.changeset import ChangeSet
from exporter.store import SCHEMA_VERSION, Store


def test_deliveries_and_held_events_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", [])
    store.load()
    store.commit(ChangeSet(deliveries={"m1": 10.0, "m2": 11.0},
                           pending={"resp_1": ("failed", 100), "resp_2": ("cancelled", 101)}))
    store.commit(ChangeSet(deliveries={"m1": None}, pending={"resp_1": None}))
    store.close()
    loaded = Store(tmp_path / "s.db", []).load()
    assert loaded.deliveries == {"m2": 11.0}
    assert loaded.pending == {"resp_2": ("cancelled", 101)}


def test_a_schema_3_file_gains_the_webhook_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, [])
    store.load()
    store.commit(ChangeSet(registrations={"thread_a": "threads"}))
    store.close()
    with sqlite3.connect(path) as db:  # take it back to schema 3, as an older exporter left it
        db.execute("DROP TABLE webhook_deliveries")
        db.execute("DROP TABLE webhook_pending")
        db.execute("DROP TABLE remembered")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    loaded = Store(path, []).load()
    assert loaded.registrations == {"thread_a": "threads"} and loaded.deliveries == {} and loaded.pending == {}
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 5
