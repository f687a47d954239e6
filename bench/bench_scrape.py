"""Print what one poll-loop tick and one scrape cost, by number of runs and of assistants.

    python bench/bench_scrape.py

The scrape serialises families built once per tick, so its cost should follow the series count and stay
flat as runs grow; the tick (tracker views + family build) grows with runs. Prints figures, asserts nothing.
"""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import disable_created_metrics, generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.model import RunSnapshot
from exporter.tracker import Tracker

T0 = 1_700_000_000
STATUSES = ("queued", "in_progress", "requires_action", "completed", "failed", "expired")


def _tracker(runs: int, assistants: int) -> Tracker:
    tr = Tracker(["assistant_id"], 3600)
    threads = max(1, runs // 100)
    for t in range(threads):
        tr.observe_listing(f"thread_{t}", [], T0, complete=True, ok=True)
    snaps: dict[str, list[RunSnapshot]] = {}
    for i in range(runs):
        tid = f"thread_{i % threads}"
        snaps.setdefault(tid, []).append(RunSnapshot(
            f"run_{i}", tid, STATUSES[i % len(STATUSES)], T0 + 1, assistant_id=f"asst_{i % assistants}",
            started_at=T0 + 2, completed_at=T0 + 9, failed_at=T0 + 9, expires_at=T0 + 601))
    for tid, batch in snaps.items():
        tr.observe_listing(tid, batch, T0 + 10, complete=True, ok=True)
    return tr


def _time(fn: object, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    disable_created_metrics()
    print(f"{'runs':>8} {'assistants':>10} {'series':>7} {'tick ms':>8} {'scrape ms':>9} {'gzip ms':>8} {'bytes':>8}")
    for runs, assistants in ((1_000, 1), (10_000, 1), (100_000, 1), (10_000, 10), (10_000, 40)):
        tr = _tracker(runs, assistants)
        collector = SnapshotCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        tick = _time(lambda tr=tr, c=collector: c.update(build_families(tr, ExporterState(), T0 + 20)))
        text = generate_latest(registry)
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        scrape = _time(lambda r=registry: generate_latest(r))
        zipped = _time(lambda t=text: gzip.compress(t))
        print(f"{runs:>8} {assistants:>10} {series:>7} {tick * 1e3:>8.1f} {scrape * 1e3:>9.2f} "
              f"{zipped * 1e3:>8.2f} {len(text):>8}")


if __name__ == "__main__":
    main()
