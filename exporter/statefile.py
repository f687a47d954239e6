"""Checks of a state file at open, beyond SQLite's own quick_check: the problems that would otherwise show
only later, in the middle of the loop (a traceback at start, or an exporter that can never write).

Each returns what is wrong, or None; the store turns it into a one-line error (exit 2)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

# What each declared column type may hold (typeof).
_TYPEOF: dict[str, tuple[str, ...]] = {"INTEGER": ("integer", "real"), "REAL": ("integer", "real"), "TEXT": ("text",)}


def empty_file(path: Path) -> bool:
    """An existing file of 0 bytes with no WAL beside it holds no state: not a fresh start, a lost file."""
    try:
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)
    except OSError:
        return False  # missing (a fresh start) or unreadable (connect says why)


def wrong_type(db: sqlite3.Connection, tables: Iterable[str]) -> str | None:
    """The first value not of the type its column declares (one scan per table), e.g. text in runs.ended_at."""
    for table in tables:
        info = db.execute(f"PRAGMA table_info({table})").fetchall()  # cid, name, type, notnull, ...
        allowed = {
            name: (*_TYPEOF[decl.upper()], *(() if notnull else ("null",))) for _, name, decl, notnull, *_ in info
        }
        where = " OR ".join(
            f"typeof({name}) NOT IN ({', '.join(repr(t) for t in kinds)})" for name, kinds in allowed.items()
        )
        row = db.execute(
            f"SELECT {', '.join(f'typeof({n})' for n in allowed)} FROM {table} WHERE {where} LIMIT 1"
        ).fetchone()
        if row is not None:
            name, found = next((n, t) for n, t in zip(allowed, row, strict=True) if t not in allowed[n])
            return f"{table}.{name} holds {found} where {' or '.join(allowed[name])} belongs"
    return None


def write_problem(db: sqlite3.Connection) -> str | None:
    """Why a write fails, tried and rolled back: a file SQLite opens read-only (a write version it does not
    know, in byte 18 of the header) would otherwise fail every commit for as long as the exporter runs."""
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    return None
