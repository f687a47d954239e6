"""Render the tracker's aggregates as Prometheus metric families.

The families are built once per poll-loop tick on the loop's thread and swapped in whole; a scrape only
serialises the latest set, so its cost depends on the number of series, never on the number of runs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

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
from exporter.aggregates import Aggregates, Histogram, Key, LabelValues
from exporter.metrics_spec import BUCKETS, MetricSpec
from exporter.tracker import Tracker


@dataclass(slots=True)
class ExporterState:
    """The exporter's own gauges, set through SelfMetrics (exporter/selfmetrics.py)."""

    api_up: dict[str, float] = field(default_factory=dict)  # source -> 0/1
    rate_limit_remaining: float | None = None
    last_poll_success: float = 0.0
    shard: tuple[int, int] = (0, 1)  # (--shard, --total-shards)


class SnapshotCollector(Collector):
    """Serves the last set of families handed to it; thread-safe by whole-list replacement.

    Listeners (the HTTP server's page cache) are told after each update, so that a page is rendered once per
    update instead of once per scrape. Instead of families, an update can hand over how to build them, done
    only if someone collects (a scrape): without scrapes, nothing is built.

    - update_lazy(build): `build` runs at the first collect() after it, on the collecting thread (under the
      lock: one build at a time); it must be safe on any thread.
    - update_prepared(prepare): `prepare` (a cheap copy of the daemon's state, on the daemon's thread only)
      returns such a build. It runs in prepare() or collect() on the thread that handed it over, and is skipped
      by other threads, which build the last prepared state.
    """

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._build: Callable[[], list[Metric]] | None = None
        self._prepare: Callable[[], Callable[[], list[Metric]]] | None = None
        self._owner = 0  # the thread that may run _prepare
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.builds = 0  # builds run, for tests and benchmarks
        self.prepares = 0

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every update, on the updating thread; it must be quick."""
        self._listeners.append(listener)

    def update(self, families: list[Metric]) -> None:
        with self._lock:
            self._families, self._build, self._prepare = families, None, None
        self._notify()

    def update_lazy(self, build: Callable[[], list[Metric]]) -> None:
        with self._lock:
            self._build, self._prepare = build, None
        self._notify()

    def update_prepared(self, prepare: Callable[[], Callable[[], list[Metric]]]) -> None:
        with self._lock:
            self._prepare, self._owner = prepare, threading.get_ident()  # a prepared build stays until then
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def prepare(self) -> None:
        """Run a pending prepare if this is the thread that handed it over (the HTTP server calls this on the
        daemon's loop before building a page in a worker thread)."""
        with self._lock:
            if self._prepare is not None and self._owner == threading.get_ident():
                self._build, self._prepare = self._prepare(), None
                self.prepares += 1

    def collect(self) -> Iterator[Metric]:
        self.prepare()
        with self._lock:
            if self._build is not None:
                self._families, self._build = self._build(), None
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


# The label sets change rarely (a new assistant): each family's zero keys are kept while they are the same.
_ZeroKeys = tuple[list[LabelValues], list[LabelValues], frozenset[LabelValues]]  # as built, sorted, as a set
_keys_cache: dict[tuple[str, bool], tuple[list[LabelValues], _ZeroKeys]] = {}


def _zero_keys(spec: MetricSpec, label_sets: Iterable[LabelValues], bare: bool = False) -> _ZeroKeys:
    """Every (first label value, *label set) combination, to export at zero until it occurs (`bare`: the label
    sets themselves, for a histogram without such a label). Shared between builds: not to be changed."""
    sets = label_sets if isinstance(label_sets, list) else list(label_sets)
    cached = _keys_cache.get((spec.name, bare))
    if cached is None or cached[0] != sets:
        keys = list(sets) if bare else [(v, *ls) for ls in sets for v in spec.zeros]
        cached = _keys_cache[(spec.name, bare)] = (sets, (keys, sorted(keys), frozenset(keys)))
    return cached[1]


def _keys(spec: MetricSpec, label_sets: Iterable[LabelValues]) -> list[LabelValues]:
    return _zero_keys(spec, label_sets)[0]


def _sorted_keys(zero_keys: _ZeroKeys, found: Iterable[LabelValues]) -> list[LabelValues]:
    """The zero keys and the keys found, sorted."""
    _, ordered, known = zero_keys
    extra = [key for key in found if key not in known]
    return sorted([*ordered, *extra]) if extra else ordered


# Samples of gauges and counters, kept per family and label values between builds: the same Sample while its
# value is unchanged (the renderer then reuses its whole line), else a new one with the same labels dict (the
# renderer finds the line's text up to the value by that dict). What add_metric() appends, sample for sample.
_SampleCache = dict[LabelValues, Sample]
_sample_cache: dict[tuple[str, tuple[str, ...]], _SampleCache] = {}


def _same_value(a: float, b: float) -> bool:
    return a == b and (a != 0 or math.copysign(1.0, a) == math.copysign(1.0, b))  # 0.0 and -0.0 print apart


def _simple_samples(fam: Metric, sample_name: str, names: tuple[str, ...], keys: Iterable[LabelValues],
                    values: dict[LabelValues, float]) -> None:
    previous = _sample_cache.get((sample_name, names), {})
    current: _SampleCache = {}
    append = fam.samples.append
    value_of = values.get
    for labels in keys:
        value = value_of(labels, 0.0)
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
    values = dict(agg.counter_items(spec.name))
    fam = _counter(spec, extra)
    keys = _sorted_keys(_zero_keys(spec, label_sets), values)
    _simple_samples(fam, fam.name + "_total", tuple(spec.label_names(extra)), keys, values)
    return fam


# Histogram lines are most of a page (15 of every 18 series) and cost the most to build, while most histograms
# do not move between two publishes: each series' samples are kept with the buckets and sum they were built
# from, and reused while those are unchanged. Samples are immutable once published. Keyed by content, so a
# stale entry can never be served; entries of series no longer exported are dropped at each build.
_HistogramCacheKey = tuple[tuple[str, ...], LabelValues]  # (label names, label values)
_histogram_cache: dict[str, dict[_HistogramCacheKey, tuple[list[int], float, list[Sample]]]] = {}


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
    found = dict(agg.histogram_items(spec.name))
    fam = _histogram(spec, extra)
    names = tuple(spec.label_names(extra))
    empty = Histogram.empty(BUCKETS[spec.name])
    previous = _histogram_cache.get(spec.name, {})
    current: dict[_HistogramCacheKey, tuple[list[int], float, list[Sample]]] = {}
    extend = fam.samples.extend
    for labels in _sorted_keys(_zero_keys(spec, label_sets, bare=not spec.zeros), found):
        hist = found.get(labels, empty)
        key = (names, labels)
        cached = previous.get(key)
        if cached is None or cached[0] != hist.counts or cached[1] != hist.sum:
            samples = _histogram_samples(fam.name, names, labels, hist, cached[2] if cached is not None else None)
            cached = (hist.counts.copy(), hist.sum, samples)
        current[key] = cached
        extend(cached[2])
    _histogram_cache[spec.name] = current
    return fam


def _gauge_family(spec: MetricSpec, extra: tuple[str, ...], values: dict[tuple[str, ...], float],
                  label_sets: Iterable[LabelValues]) -> Metric:
    fam = _gauge(spec, extra)
    _simple_samples(fam, fam.name, tuple(spec.label_names(extra)), _keys(spec, label_sets), values)
    return fam


def _label_sets(tracker: Tracker, run_sources: Sequence[str]) -> list[LabelValues]:
    """(source, *extra) combinations seen, plus an empty one for each source that is on but has none yet."""
    found = tracker.label_sets()
    blank = ("",) * len(tracker.extra_labels)
    sources_seen = {ls[0] for ls in found}
    found.update((source, *blank) for source in run_sources if source not in sources_seen)
    return sorted(found) or [("", *blank)]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the families are built from, copied out of the tracker and the exporter's state on their thread
    (cheap: the tracker's answers and copies of the aggregates), so that building the families themselves,
    ~10,000 series, can run on another thread while the tracker moves on."""

    extra: tuple[str, ...]
    aggregates: Aggregates
    label_sets: list[LabelValues]
    status_counts: dict[tuple[str, ...], int]
    oldest_ages: dict[tuple[str, ...], float]
    ratios: dict[tuple[str, ...], float]
    scope_states: dict[str, int]
    state: ExporterState
    api_sources: tuple[str, ...]


# Copies of the histograms handed to the last snapshot, never changed once made: a histogram whose count and
# sum are unchanged (observe() and merge() change both) is handed over again instead of copied.
_copies: dict[Key, Histogram] = {}


def _copy_histograms(histograms: dict[Key, Histogram]) -> dict[Key, Histogram]:
    global _copies
    copies: dict[Key, Histogram] = {}
    for key, hist in histograms.items():
        copy = _copies.get(key)
        if copy is None or copy.count != hist.count or copy.sum != hist.sum:
            copy = Histogram(hist.bounds, hist.counts.copy(), hist.sum, hist.count)
        copies[key] = copy
    _copies = copies
    return copies


def snapshot(tracker: Tracker, state: ExporterState, now: float, run_sources: Sequence[str] = (),
             api_sources: Sequence[str] = ()) -> Snapshot:
    copied = Aggregates(dict(tracker.aggregates.counters), _copy_histograms(tracker.aggregates.histograms))
    return Snapshot(tracker.extra_labels, copied, _label_sets(tracker, run_sources), tracker.status_counts(),
                    tracker.oldest_ages(now), tracker.ratios(now), tracker.scope_states(),
                    replace(state, api_up=dict(state.api_up)), tuple(api_sources))


def _run_families(snap: Snapshot) -> list[Metric]:
    extra, agg, label_sets, ratios = snap.extra, snap.aggregates, snap.label_sets, snap.ratios
    counts = {key: float(n) for key, n in snap.status_counts.items()}
    ages = {key: round(age, 3) for key, age in snap.oldest_ages.items()}
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


def _single(spec: MetricSpec, values: dict[LabelValues, float]) -> Metric:
    """A gauge of these series, in this order, with the samples and label dicts kept between builds."""
    fam = _gauge(spec)
    _simple_samples(fam, fam.name, tuple(spec.label_names(())), list(values), values)
    return fam


def _exporter_families(snap: Snapshot) -> list[Metric]:
    agg, state, api_sources = snap.aggregates, snap.state, snap.api_sources
    none: list[LabelValues] = [()]
    sources = sorted({*api_sources, *state.api_up})
    fams: list[Metric] = [_single(m.API_UP, {(source,): state.api_up.get(source, 0.0) for source in sources}),
                          _counter_family(agg, m.API_REQUESTS, (), ())]
    if state.rate_limit_remaining is not None:
        fams.append(_single(m.RATE_LIMIT_REMAINING, {(): state.rate_limit_remaining}))
    fams.append(_histogram_family(agg, m.POLL_DURATION, (), none))
    fams.append(_single(m.LAST_POLL_SUCCESS, {(): state.last_poll_success}))
    fams.append(_gauge_family(m.THREADS, (), {(k,): float(v) for k, v in snap.scope_states.items()}, none))
    fams.append(_counter_family(agg, m.INVALID_OBJECTS, (), none))
    fams.append(_counter_family(agg, m.PUSH_REQUESTS, (), ()))
    fams.append(_counter_family(agg, m.PUSH_ITEMS, (), none))
    fams.append(_counter_family(agg, m.WEBHOOKS, (), ()))
    for spec in (m.DISCOVERED_THREADS, m.STORE_ERRORS):
        fams.append(_counter_family(agg, spec, (), none))
    fams.append(_counter_family(agg, m.LABEL_OVERFLOW, (), none))
    fams.append(_single(m.SHARD, {(str(state.shard[0]), str(state.shard[1])): 1}))
    fams.append(_single(m.BUILD_INFO, {(__version__,): 1}))
    return fams


def families(snap: Snapshot) -> list[Metric]:
    """The families of a snapshot; on any thread, one build at a time (the samples kept between builds are
    shared): SnapshotCollector runs it under its lock."""
    return _run_families(snap) + _exporter_families(snap)


def build_families(tracker: Tracker, state: ExporterState, now: float,
                   run_sources: Sequence[str] = (), api_sources: Sequence[str] = ()) -> list[Metric]:
    return families(snapshot(tracker, state, now, run_sources, api_sources))
