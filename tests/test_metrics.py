"""The collector's exposition: the contract's names, types and labels, zeros, and no per-run series."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporter import statuses
from exporter.familybuild import FamilyBuilder
from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.metrics_spec import METRICS, spec
from exporter.model import RunSnapshot
from exporter.tracker import Tracker

T0 = 1_700_000_000


def _scrape(tracker: Tracker, state: ExporterState | None = None, now: float = T0 + 20) -> dict[str, list]:  # type: ignore[type-arg]
    collector = SnapshotCollector()
    collector.update(build_families(tracker, state or ExporterState(rate_limit_remaining=42), now,
                                    ("threads",), ("threads",)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def _busy_tracker(labels: list[str]) -> Tracker:
    tr = Tracker(labels, 3600)
    tr.observe_listing("t", [], T0, complete=True, ok=True)
    runs = [RunSnapshot(f"r{i}", "t", "failed" if i % 3 == 0 else "in_progress", T0 + 1, assistant_id="a",
                        model="m", started_at=T0 + 2, failed_at=T0 + 5) for i in range(50)]
    tr.observe_listing("t", runs, T0 + 10, complete=True, ok=True)
    return tr


def test_every_contract_metric_is_exported_with_its_type_and_labels() -> None:
    families = _scrape(_busy_tracker(["assistant_id"]))
    for m in METRICS:
        family_name = m.name.removesuffix("_total") if m.type == "counter" else m.name
        if m.name in ("assistants_exporter_api_requests_total", "assistants_exporter_push_requests_total",
                      "assistants_exporter_webhooks_total"):
            continue  # no request or delivery yet: no series (their label values are not known in advance)
        assert family_name in families, m.name
        sample_labels = set().union(*(set(lbl) for _, lbl, _ in families[family_name]))
        expected = set(m.labels) | ({"assistant_id"} if m.run_metric else set())
        if m.type == "histogram":
            expected |= {"le"}
        assert sample_labels == expected, m.name


def test_all_eleven_statuses_are_exported_at_zero_when_empty() -> None:
    families = _scrape(_busy_tracker(["assistant_id"]))
    runs = {lbl["status"]: v for _, lbl, v in families["assistants_runs"]}
    assert set(runs) == set(statuses.ALL_STATUSES)
    assert runs["in_progress"] == 33 and runs["failed"] == 17 and runs["queued"] == 0


def test_no_run_or_thread_id_ever_becomes_a_label_and_series_do_not_grow_with_runs() -> None:
    small = _scrape(_busy_tracker(["assistant_id", "model"]))
    tr = _busy_tracker(["assistant_id", "model"])
    more = [RunSnapshot(f"x{i}", "t", "completed", T0 + 3, assistant_id="a", model="m") for i in range(500)]
    tr.observe_listing("t", more, T0 + 11, complete=False, ok=True)
    big = _scrape(tr)
    assert sum(map(len, small.values())) == sum(map(len, big.values()))
    for samples in big.values():
        for _, labels, _ in samples:
            assert not any(v.startswith(("r", "x", "t")) and v[1:].isdigit() for v in labels.values())


def test_empty_exporter_still_exports_every_status_with_empty_extra_labels() -> None:
    families = _scrape(Tracker(["assistant_id"], 3600))
    assert {lbl["assistant_id"] for _, lbl, _ in families["assistants_runs"]} == {""}
    assert len(families["assistants_runs"]) == 11


def test_ratio_windows_and_build_info() -> None:
    families = _scrape(_busy_tracker(["assistant_id"]))
    failure = {lbl["window"]: v for _, lbl, v in families["assistants_run_failure_ratio"]}
    assert failure == {"5m": 1.0, "1h": 1.0}
    (_, info_labels, info_value), = families["assistants_exporter_build_info"]
    assert info_value == 1 and info_labels["version"]


def test_spec_lookup_rejects_unknown_names() -> None:
    assert spec("assistants_runs").type == "gauge"
    try:
        spec("assistants_nope")
    except KeyError:
        return
    raise AssertionError("unknown metric name accepted")


def _page(families: list) -> bytes:  # type: ignore[type-arg]
    collector = SnapshotCollector()
    collector.update(families)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _through_add_metric(families: list) -> list:  # type: ignore[type-arg]
    """The same histogram values re-added through prometheus_client's own HistogramMetricFamily.add_metric."""
    out = []
    for fam in families:
        if fam.type != "histogram":
            out.append(fam)
            continue
        series: dict[tuple[tuple[str, str], ...], tuple[list[tuple[str, float]], float]] = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            buckets, total = series.setdefault(key, ([], 0.0))
            if s.name.endswith("_bucket"):
                buckets.append((s.labels["le"], s.value))
            elif s.name.endswith("_sum"):
                series[key] = (buckets, s.value)
        names = [k for k, _ in next(iter(series))] if series else []
        ref = HistogramMetricFamily(fam.name, fam.documentation, labels=names)
        for key, (buckets, total) in series.items():
            ref.add_metric([v for _, v in key], buckets, total)
        out.append(ref)
    return out


def test_histogram_lines_reused_between_builds_are_byte_identical_to_a_fresh_build() -> None:
    tracker = _busy_tracker(["assistant_id", "model"])
    pages = []
    for step in range(4):
        if step:  # move some histograms, not others, between builds
            tracker.aggregates.observe(spec("assistants_run_duration_seconds").name,
                                       ("failed", "threads", "a", "m"), 7.5 * step)
        warm = build_families(tracker, ExporterState(), T0 + 20, ("threads",), ("threads",))
        cold = build_families(tracker, ExporterState(), T0 + 20, ("threads",), ("threads",), FamilyBuilder())
        assert _page(warm) == _page(cold) == _page(_through_add_metric(cold))
        pages.append(_page(warm))
    assert len(set(pages)) == 4  # each observation shows in the next page
