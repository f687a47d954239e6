"""Render the tracker's aggregates as Prometheus metric families.

The families are built once per poll-loop tick on the loop's thread and swapped in whole; a scrape only
serialises the latest set, so its cost depends on the number of series, never on the number of runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter import __version__, statuses
from exporter.aggregates import BUCKETS, Aggregates, Histogram, LabelValues
from exporter.metrics_spec import METRICS, RATIO_WINDOWS, MetricSpec
from exporter.model import INVALID_REASONS
from exporter.tracker import Tracker

# Values every dashboard and alert may rely on, exported at 0 before the first occurrence.
KNOWN_ERROR_CODES: tuple[str, ...] = ("server_error", "rate_limit_exceeded", "invalid_prompt")
KNOWN_INCOMPLETE_REASONS: tuple[str, ...] = ("max_completion_tokens", "max_prompt_tokens")
TOKEN_TYPES: tuple[str, ...] = ("prompt", "completion")
THREAD_STATES: tuple[str, ...] = ("active", "idle", "gone")

_SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}


@dataclass(slots=True)
class ExporterState:
    """The exporter's own gauges, set by the daemon."""

    api_up: float = 0.0
    rate_limit_remaining: float | None = None
    last_poll_success: float = 0.0


class SnapshotCollector(Collector):
    """Serves the last set of families handed to it; thread-safe by whole-list replacement.

    Listeners (the HTTP server's page cache) are told after each update, so a page is rendered once per
    update instead of once per scrape.
    """

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every update(), on the updating thread; it must be quick."""
        self._listeners.append(listener)

    def update(self, families: list[Metric]) -> None:
        with self._lock:
            self._families = families
        for listener in self._listeners:
            listener()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._families
        return iter(families)

    def describe(self) -> Iterable[Metric]:
        """Every metric of the contract, so the registry can answer `?name[]=` filters (it maps names to
        collectors once, at registration, from this)."""
        return [Metric(_name(m.name), m.help, m.type) for m in METRICS]


def _name(metric: str) -> str:
    """prometheus_client appends _total to counters itself."""
    return metric.removesuffix("_total") if _SPECS[metric].type == "counter" else metric


def _labels(metric: str, extra: tuple[str, ...]) -> list[str]:
    spec = _SPECS[metric]
    return [*spec.labels, *extra] if spec.run_metric else list(spec.labels)


def _gauge(metric: str, extra: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric, _SPECS[metric].help, labels=_labels(metric, extra))


def _counter(metric: str, extra: tuple[str, ...]) -> CounterMetricFamily:
    return CounterMetricFamily(_name(metric), _SPECS[metric].help, labels=_labels(metric, extra))


def _histogram(metric: str, extra: tuple[str, ...]) -> HistogramMetricFamily:
    return HistogramMetricFamily(metric, _SPECS[metric].help, labels=_labels(metric, extra))


def _keys(first_values: Iterable[str], label_sets: Iterable[LabelValues]) -> list[LabelValues]:
    """Every (first label value, *extra label values) combination, to export at zero until it occurs."""
    return [(v, *ls) for ls in label_sets for v in first_values]


def _counter_family(agg: Aggregates, metric: str, extra: tuple[str, ...],
                    defaults: Iterable[LabelValues]) -> CounterMetricFamily:
    values: dict[LabelValues, float] = dict.fromkeys(defaults, 0.0)
    values.update(agg.counter_items(metric))
    fam = _counter(metric, extra)
    for labels, value in sorted(values.items()):
        fam.add_metric(list(labels), value)
    return fam


def _histogram_family(agg: Aggregates, metric: str, extra: tuple[str, ...],
                      defaults: Iterable[LabelValues]) -> HistogramMetricFamily:
    hists: dict[LabelValues, Histogram] = {key: Histogram.empty(BUCKETS[metric]) for key in defaults}
    hists.update(agg.histogram_items(metric))
    fam = _histogram(metric, extra)
    for labels, hist in sorted(hists.items()):
        fam.add_metric(list(labels), hist.cumulative(), hist.sum)
    return fam


def run_families(tracker: Tracker, now: float) -> list[Metric]:
    extra = tracker.extra_labels
    agg = tracker.aggregates
    label_sets = sorted(tracker.label_sets()) or [("",) * len(extra)]
    fams: list[Metric] = []

    runs = _gauge("assistants_runs", extra)
    counts = tracker.status_counts()
    for ls in label_sets:
        for status in statuses.ALL_STATUSES:
            runs.add_metric([status, *ls], counts.get((status, *ls), 0))
    fams.append(runs)

    fams.append(_counter_family(agg, "assistants_runs_finished_total", extra,
                                _keys(statuses.TERMINAL_STATUSES, label_sets)))
    fams.append(_histogram_family(agg, "assistants_run_status_duration_seconds", extra,
                                  _keys(statuses.NON_TERMINAL, label_sets)))
    fams.append(_histogram_family(agg, "assistants_run_duration_seconds", extra,
                                  _keys(statuses.TERMINAL_STATUSES, label_sets)))

    oldest = _gauge("assistants_run_oldest_age_seconds", extra)
    ages = tracker.oldest_ages(now)
    for ls in label_sets:
        for status in statuses.NON_TERMINAL:
            oldest.add_metric([status, *ls], round(ages.get((status, *ls), 0.0), 3))
    fams.append(oldest)

    ratios = tracker.ratios(now)
    for kind in ("failure", "expiry"):
        fam = _gauge(f"assistants_run_{kind}_ratio", extra)
        for ls in label_sets:
            for window in RATIO_WINDOWS:
                fam.add_metric([window, *ls], ratios.get((kind, window, *ls), 0.0))
        fams.append(fam)

    fams.append(_counter_family(agg, "assistants_run_errors_total", extra, _keys(KNOWN_ERROR_CODES, label_sets)))
    fams.append(_counter_family(agg, "assistants_run_incomplete_total", extra,
                                _keys(KNOWN_INCOMPLETE_REASONS, label_sets)))
    fams.append(_counter_family(agg, "assistants_run_tokens_total", extra, _keys(TOKEN_TYPES, label_sets)))
    return fams


def exporter_families(tracker: Tracker, state: ExporterState) -> list[Metric]:
    agg = tracker.aggregates
    fams: list[Metric] = []
    up = _gauge("assistants_exporter_api_up", ())
    up.add_metric([], state.api_up)
    fams.append(up)
    fams.append(_counter_family(agg, "assistants_exporter_api_requests_total", (), ()))
    if state.rate_limit_remaining is not None:
        remaining = _gauge("assistants_exporter_rate_limit_remaining_requests", ())
        remaining.add_metric([], state.rate_limit_remaining)
        fams.append(remaining)
    fams.append(_histogram_family(agg, "assistants_exporter_poll_duration_seconds", (), [()]))
    last = _gauge("assistants_exporter_last_poll_success_timestamp_seconds", ())
    last.add_metric([], state.last_poll_success)
    fams.append(last)
    threads = _gauge("assistants_exporter_threads", ())
    for name, count in tracker.thread_states().items():
        threads.add_metric([name], count)
    fams.append(threads)
    fams.append(_counter_family(agg, "assistants_exporter_invalid_objects_total", (), _keys(INVALID_REASONS, [()])))
    info = _gauge("assistants_exporter_build_info", ())
    info.add_metric([__version__], 1)
    fams.append(info)
    return fams


def build_families(tracker: Tracker, state: ExporterState, now: float) -> list[Metric]:
    return run_families(tracker, now) + exporter_families(tracker, state)
