"""Render the tracker's aggregates as Prometheus metric families.

The families are built once per poll-loop tick on the loop's thread and swapped in whole; a scrape only
serialises the latest set, so its cost depends on the number of series, never on the number of runs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter import __version__
from exporter import metrics_spec as m
from exporter.aggregates import Aggregates, Histogram, LabelValues
from exporter.metrics_spec import BUCKETS, MetricSpec
from exporter.tracker import Tracker


@dataclass(slots=True)
class ExporterState:
    """The exporter's own gauges, set by the daemon."""

    api_up: dict[str, float] = field(default_factory=dict)  # source -> 0/1
    rate_limit_remaining: float | None = None
    last_poll_success: float = 0.0
    shard: tuple[int, int] = (0, 1)  # (--shard, --total-shards)


class SnapshotCollector(Collector):
    """Serves the last set of families handed to it; thread-safe by whole-list replacement.

    Listeners (the HTTP server's page cache) are told after each update, so that a page is rendered once per
    update instead of once per scrape. update_lazy() hands over a function that builds the families instead:
    it runs at the first collect() after it, only if someone collects (a scrape), and only on the thread that
    handed it over (the daemon's state is not thread-safe): other threads get the last families built.
    """

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._build: Callable[[], list[Metric]] | None = None
        self._owner = 0  # the thread that may run _build
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.builds = 0  # update_lazy() builds run, for tests and benchmarks

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every update(), on the updating thread; it must be quick."""
        self._listeners.append(listener)

    def update(self, families: list[Metric]) -> None:
        with self._lock:
            self._families = families
            self._build = None
        self._notify()

    def update_lazy(self, build: Callable[[], list[Metric]]) -> None:
        with self._lock:
            self._build = build
            self._owner = threading.get_ident()
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._build is not None and self._owner == threading.get_ident():
                self._families = self._build()
                self._build = None
                self.builds += 1
            families = self._families
        return iter(families)

    def describe(self) -> Iterable[Metric]:
        """Every metric of the contract, so the registry can answer `?name[]=` filters (it maps names to
        collectors once, at registration, from this)."""
        return [Metric(spec.sample_name, spec.help, spec.type) for spec in m.METRICS]


def _gauge(spec: MetricSpec, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.label_names(extra)))


def _counter(spec: MetricSpec, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(spec.sample_name, spec.help, labels=list(spec.label_names(extra)))


def _histogram(spec: MetricSpec, extra: tuple[str, ...] = ()) -> HistogramMetricFamily:
    return HistogramMetricFamily(spec.name, spec.help, labels=list(spec.label_names(extra)))


def _keys(spec: MetricSpec, label_sets: Iterable[LabelValues]) -> list[LabelValues]:
    """Every (first label value, *label set) combination, to export at zero until it occurs."""
    return [(v, *ls) for ls in label_sets for v in spec.zeros]


# Samples of gauges and counters, kept per family and label values between builds: the same Sample while its
# value is unchanged (the renderer then reuses its whole line), else a new one with the same labels dict (the
# renderer finds the line's text up to the value by that dict). What add_metric() appends, sample for sample.
_SampleCache = dict[LabelValues, Sample]
_sample_cache: dict[tuple[str, tuple[str, ...]], _SampleCache] = {}


def _same_value(a: float, b: float) -> bool:
    return a == b and (a != 0 or math.copysign(1.0, a) == math.copysign(1.0, b))  # 0.0 and -0.0 print apart


def _simple_samples(fam: Metric, sample_name: str, names: tuple[str, ...],
                    items: Iterable[tuple[LabelValues, float]]) -> None:
    previous = _sample_cache.get((sample_name, names), {})
    current: _SampleCache = {}
    append = fam.samples.append
    for labels, value in items:
        old = previous.get(labels)
        if old is None:
            sample = Sample(sample_name, dict(zip(names, labels, strict=True)), value, None)
        elif _same_value(old.value, value):
            sample = old
        else:
            sample = Sample(sample_name, old.labels, value, None)
        current[labels] = sample
        append(sample)
    _sample_cache[(sample_name, names)] = current


def _counter_family(agg: Aggregates, spec: MetricSpec, extra: tuple[str, ...],
                    label_sets: Iterable[LabelValues]) -> Metric:
    values: dict[LabelValues, float] = dict.fromkeys(_keys(spec, label_sets), 0.0)
    values.update(agg.counter_items(spec.name))
    fam = _counter(spec, extra)
    _simple_samples(fam, fam.name + "_total", tuple(spec.label_names(extra)), sorted(values.items()))
    return fam


# Histogram lines are most of a page (15 of every 18 series) and cost the most to build, while most histograms
# do not move between two publishes: each series' samples are kept with the buckets and sum they were built
# from, and reused while those are unchanged. Samples are immutable once published. Keyed by content, so a
# stale entry can never be served; entries of series no longer exported are dropped at each build.
_HistogramCacheKey = tuple[tuple[str, ...], LabelValues]  # (label names, label values)
_histogram_cache: dict[str, dict[_HistogramCacheKey, tuple[tuple[int, ...], float, list[Sample]]]] = {}


def _histogram_samples(name: str, names: tuple[str, ...], labels: LabelValues, hist: Histogram,
                       before: list[Sample] | None) -> list[Sample]:
    """What HistogramMetricFamily.add_metric(labels, hist.cumulative(), hist.sum) appends, sample for sample;
    reusing the samples `before` of the same series whose values are unchanged, and their labels dicts."""
    buckets = hist.cumulative()
    if before is None or len(before) != len(buckets) + 2:
        base = dict(zip(names, labels, strict=True))
        out = [Sample(name + "_bucket", {**base, "le": le}, value, None, None) for le, value in buckets]
        out.append(Sample(name + "_count", dict(base), buckets[-1][1], None))
        out.append(Sample(name + "_sum", dict(base), hist.sum, None))
        return out
    values = [value for _, value in buckets]
    values += (buckets[-1][1], hist.sum)
    return [old if _same_value(old.value, value) else Sample(old.name, old.labels, value, None, None)
            for old, value in zip(before, values, strict=True)]


def _histogram_family(agg: Aggregates, spec: MetricSpec, extra: tuple[str, ...],
                      label_sets: Iterable[LabelValues]) -> Metric:
    hists: dict[LabelValues, Histogram] = {key: Histogram.empty(BUCKETS[spec.name])
                                           for key in (_keys(spec, label_sets) if spec.zeros else label_sets)}
    hists.update(agg.histogram_items(spec.name))
    fam = _histogram(spec, extra)
    names = tuple(spec.label_names(extra))
    previous = _histogram_cache.get(spec.name, {})
    current: dict[_HistogramCacheKey, tuple[tuple[int, ...], float, list[Sample]]] = {}
    for labels, hist in sorted(hists.items()):
        counts = tuple(hist.counts)
        cached = previous.get((names, labels))
        if cached is not None and cached[0] == counts and cached[1] == hist.sum:
            samples = cached[2]
        else:
            samples = _histogram_samples(fam.name, names, labels, hist, cached[2] if cached is not None else None)
        current[(names, labels)] = (counts, hist.sum, samples)
        fam.samples.extend(samples)
    _histogram_cache[spec.name] = current
    return fam


def _gauge_family(spec: MetricSpec, extra: tuple[str, ...], values: dict[tuple[str, ...], float],
                  label_sets: Iterable[LabelValues]) -> Metric:
    fam = _gauge(spec, extra)
    _simple_samples(fam, fam.name, tuple(spec.label_names(extra)),
                    ((key, values.get(key, 0.0)) for key in _keys(spec, label_sets)))
    return fam


def _label_sets(tracker: Tracker, run_sources: Sequence[str]) -> list[LabelValues]:
    """(source, *extra) combinations seen, plus an empty one for each source that is on but has none yet."""
    found = tracker.label_sets()
    blank = ("",) * len(tracker.extra_labels)
    sources_seen = {ls[0] for ls in found}
    found.update((source, *blank) for source in run_sources if source not in sources_seen)
    return sorted(found) or [("", *blank)]


def run_families(tracker: Tracker, now: float, run_sources: Sequence[str] = ()) -> list[Metric]:
    extra = tracker.extra_labels
    agg = tracker.aggregates
    label_sets = _label_sets(tracker, run_sources)
    counts = {key: float(n) for key, n in tracker.status_counts().items()}
    ages = {key: round(age, 3) for key, age in tracker.oldest_ages(now).items()}
    ratios = tracker.ratios(now)
    return [
        _gauge_family(m.RUNS, extra, counts, label_sets),
        _counter_family(agg, m.RUNS_FINISHED, extra, label_sets),
        _histogram_family(agg, m.STATUS_DURATION, extra, label_sets),
        _histogram_family(agg, m.RUN_DURATION, extra, label_sets),
        _gauge_family(m.OLDEST_AGE, extra, ages, label_sets),
        _gauge_family(m.FAILURE_RATIO, extra,
                      {k[1:]: v for k, v in ratios.items() if k[0] == "failure"}, label_sets),
        _gauge_family(m.EXPIRY_RATIO, extra,
                      {k[1:]: v for k, v in ratios.items() if k[0] == "expiry"}, label_sets),
        _counter_family(agg, m.ERRORS, extra, label_sets),
        _counter_family(agg, m.INCOMPLETE, extra, label_sets),
        _counter_family(agg, m.TOKENS, extra, label_sets),
    ]


def exporter_families(tracker: Tracker, state: ExporterState, api_sources: Sequence[str] = ()) -> list[Metric]:
    agg = tracker.aggregates
    none: list[LabelValues] = [()]
    up = _gauge(m.API_UP)
    for source in sorted({*api_sources, *state.api_up}):
        up.add_metric([source], state.api_up.get(source, 0.0))
    fams: list[Metric] = [up, _counter_family(agg, m.API_REQUESTS, (), ())]
    if state.rate_limit_remaining is not None:
        remaining = _gauge(m.RATE_LIMIT_REMAINING)
        remaining.add_metric([], state.rate_limit_remaining)
        fams.append(remaining)
    fams.append(_histogram_family(agg, m.POLL_DURATION, (), none))
    last = _gauge(m.LAST_POLL_SUCCESS)
    last.add_metric([], state.last_poll_success)
    fams.append(last)
    fams.append(_gauge_family(m.THREADS, (), {(k,): float(v) for k, v in tracker.scope_states().items()}, none))
    fams.append(_counter_family(agg, m.INVALID_OBJECTS, (), none))
    fams.append(_counter_family(agg, m.PUSH_REQUESTS, (), ()))
    fams.append(_counter_family(agg, m.PUSH_ITEMS, (), none))
    fams.append(_counter_family(agg, m.WEBHOOKS, (), ()))
    for spec in (m.DISCOVERED_THREADS, m.STORE_ERRORS):
        fams.append(_counter_family(agg, spec, (), none))
    shard = _gauge(m.SHARD)
    shard.add_metric([str(state.shard[0]), str(state.shard[1])], 1)
    fams.append(shard)
    info = _gauge(m.BUILD_INFO)
    info.add_metric([__version__], 1)
    fams.append(info)
    return fams


def build_families(tracker: Tracker, state: ExporterState, now: float,
                   run_sources: Sequence[str] = (), api_sources: Sequence[str] = ()) -> list[Metric]:
    return run_families(tracker, now, run_sources) + exporter_families(tracker, state, api_sources)
