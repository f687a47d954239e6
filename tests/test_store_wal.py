"""A small volume filled up: the WAL is checkpointed and truncated after a failed commit, so the exporter
writes again once there is room, and the WAL does not keep the volume full (issue 16).

Runs on a real 2 MB tmpfs (needs root to mount; skipped without root, never under CI=true)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.committer import STORE_RETRY_MAX
from exporter.daemon import Daemon
from exporter.metrics import SnapshotCollector
from exporter.metrics_spec import API_REQUESTS
from exporter.model import RunSnapshot
from exporter.scheduler import Schedule
from exporter.store import JOURNAL_SIZE_LIMIT, Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList
from tests.helpers import in_ci

WALL0 = 1_800_000_000.0
RUNS = 20


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 and not in_ci():
        pytest.skip("mounting a tmpfs needs root (runs under CI=true)")
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: a failed test may hold it open


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_wal_that_filled_a_small_volume_is_emptied_and_never_fills_it_again(small_volume: Path) -> None:
    """The same rows rewritten commit after commit: the database stays tiny while the WAL grows (SQLite
    checkpoints at 4 MB by default, more than the volume has), until the volume is full. Once space is freed
    the WAL is emptied into the file at once, and from then on it is checkpointed before it fills the volume."""
    clock = [1000.0]
    state = small_volume / "state.db"
    daemon = Daemon(
        sources={},
        tracker=Tracker(["assistant_id"], 3600),
        store=Store(state, ["assistant_id"]),
        collector=SnapshotCollector(),
        schedule=Schedule(1, 10),
        watchlist=WatchList(),
        run_sources=("push",),
        wall=lambda: WALL0 + clock[0],
        mono=lambda: clock[0],
    )
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (_free(small_volume) - 600 * 1024))  # leave 600 KB
    wal = state.with_name(state.name + "-wal")

    def commit_again() -> bool:
        for i in range(20):  # the same 20 counter rows, of about 2 KB each, every time
            daemon.tracker.aggregates.inc(API_REQUESTS.name, ("push", f"endpoint_{i}_" + "e" * 2000, "200"))
        clock[0] += STORE_RETRY_MAX  # past any backoff
        return daemon.committer.commit()

    try:
        results = [commit_again() for _ in range(10)]
        assert results[0] and not results[-1] and "full" in str(daemon.health.store_error)
        ballast.unlink()
        assert commit_again()  # the WAL was emptied into the file first, then this commit went in
        assert wal.stat().st_size < JOURNAL_SIZE_LIMIT // 4, wal.stat().st_size  # that commit alone
        # Far more WAL frames than the volume holds: checkpointed at 1 MB, the WAL never fills it again.
        assert all(commit_again() for _ in range(60)), daemon.health.store_error
        assert wal.stat().st_size <= 2 * JOURNAL_SIZE_LIMIT
    finally:
        daemon.store.close()
    store = Store(state, ["assistant_id"])
    try:
        key = ("push", "endpoint_0_" + "e" * 2000, "200")
        assert store.load().aggregates.counter(API_REQUESTS.name, key) == 71  # every increment, none lost
    finally:
        store.close()


def test_a_full_small_volume_recovers_once_space_is_freed(small_volume: Path) -> None:
    clock = [1000.0]
    state = small_volume / "state.db"
    daemon = Daemon(
        sources={},
        tracker=Tracker(["assistant_id"], 10 * DEDUPE_WINDOW, dedupe_window=DEDUPE_WINDOW),
        store=Store(state, ["assistant_id"]),
        collector=SnapshotCollector(),
        schedule=Schedule(1, 10),
        watchlist=WatchList(),
        run_sources=("push",),
        wall=lambda: WALL0 + clock[0],
        mono=lambda: clock[0],
    )
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (_free(small_volume) - 400 * 1024))  # leave 400 KB
    batch = 0

    def commit_more() -> bool:
        nonlocal batch
        batch += 1
        for i in range(RUNS):  # about 80 KB a commit (ids of 2 KB, in the table and its index)
            snap = RunSnapshot(f"run_{batch}_{i}_" + "r" * 2000, "", "completed", int(WALL0), source="push")
            daemon.tracker.observe_run(snap, WALL0 + clock[0])
        clock[0] += STORE_RETRY_MAX  # past any backoff
        return daemon.committer.commit()

    for _ in range(30):
        if not commit_more():
            break
    assert daemon.health.store_error is not None and "full" in daemon.health.store_error
    assert not commit_more()  # still full: the changes are kept, nothing is lost
    ballast.unlink()
    assert commit_more(), daemon.health.store_error  # the kept batches and this one
    wal = state.with_name(state.name + "-wal")
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT, wal.stat().st_size  # only what that commit wrote
    daemon.store.close()
    store = Store(state, ["assistant_id"])
    assert len(store.load().runs) == RUNS * batch  # every run of every batch, the refused ones too
    store.close()
