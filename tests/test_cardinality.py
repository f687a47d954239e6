"""Bounded cardinality: 10,000 distinct values per network label give at most cap + 1 (`other`) label values,
a bounded page, an overflow count, and the caps hold after a restart (rebuilt from the state file)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporter.cardinality import DEFAULT_LIMITS, OTHER, LabelCaps
from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.model import SOURCE_PUSH, RunSnapshot
from exporter.store import Store
from exporter.tracker import Tracker

NOW = 1_800_000_000
N = 10_000
LABELS = ["assistant_id", "model"]
OVERFLOW = "assistants_exporter_label_values_overflow_total"


def _finish_many(tracker: Tracker, prefix: str, count: int = N) -> None:
    for i in range(count):
        status = ("failed", "incomplete", "completed")[i % 3]
        tracker.observe_run(RunSnapshot(
            id=f"{prefix}{i}", scope="", status=status, created_at=NOW - 10, completed_at=NOW - 1,
            failed_at=NOW - 1, assistant_id=f"asst_{prefix}{i}", model=f"model_{prefix}{i}",
            error_code=f"code_{prefix}{i}", incomplete_reason=f"reason_{prefix}{i}", source=SOURCE_PUSH), NOW)


def _page(tracker: Tracker) -> bytes:
    collector = SnapshotCollector()
    collector.update(build_families(tracker, ExporterState(), NOW, (SOURCE_PUSH,), ()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _values(page: bytes, label: str) -> set[str]:
    """The values of a run label (not the exporter's own `reason` of invalid_objects_total)."""
    return {s.labels[label] for f in text_string_to_metric_families(page.decode()) for s in f.samples
            if label in s.labels and f.name.startswith("assistants_run")}


def _overflow(page: bytes) -> dict[str, float]:
    return {s.labels["label"]: s.value for f in text_string_to_metric_families(page.decode()) for s in f.samples
            if s.name == OVERFLOW}


def test_label_caps_admit_the_first_values_and_keep_them() -> None:
    caps = LabelCaps({"model": 2})
    assert [caps.value("model", v) for v in ("a", "b", "c", "a")] == [("a", False), ("b", False), (OTHER, True),
                                                                       ("a", False)]


def test_ten_thousand_values_per_label_stay_bounded_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", LABELS)
    tracker = store.load().tracker(LABELS, 3600)
    _finish_many(tracker, "r")
    page = _page(tracker)
    limits = DEFAULT_LIMITS
    assert len(_values(page, "assistant_id")) <= limits["assistant_id"] + 1
    assert len(_values(page, "model")) <= limits["model"] + 1
    assert len(_values(page, "code")) <= limits["code"] + 1
    assert len(_values(page, "reason")) <= limits["reason"] + 1
    series = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
    print(f"{N} distinct values per label: {series} series, page {len(page)} bytes (unbounded: ~976,533 series)")
    assert len(page) < 8_000_000  # was 105 MB for 10,000 assistant ids
    overflow = _overflow(page)
    assert overflow["assistant_id"] >= N - limits["assistant_id"]
    assert overflow["model"] >= N - limits["model"]
    assert overflow["code"] > 0 and overflow["reason"] > 0
    store.commit(tracker.take_changes())
    store.close()
    # A restart rebuilds the admitted values from the counters: new values still go to `other`.
    again = Store(tmp_path / "s.db", LABELS)
    restarted = again.load().tracker(LABELS, 3600)
    _finish_many(restarted, "s", 300)
    after = _page(restarted)
    assert _values(after, "assistant_id") == _values(page, "assistant_id")
    assert _values(after, "model") == _values(page, "model")
    assert _overflow(after)["assistant_id"] >= overflow["assistant_id"] + 300
    again.close()


def test_lower_caps_from_flags_apply() -> None:
    tracker = Tracker(LABELS, 3600)
    tracker.caps.set_limits({"assistant_id": 3, "model": 2})
    _finish_many(tracker, "r", 50)
    page = _page(tracker)
    assert _values(page, "assistant_id") == {"asst_r0", "asst_r1", "asst_r2", OTHER}
    assert len(_values(page, "model")) == 3
