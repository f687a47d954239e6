"""Render the tracker's aggregates as Prometheus metric families.

A snapshot of the tracker is taken on the loop when a scrape asks for a page after a change; the families are
built from it in the render thread, again only where values moved (familybuild.py). Their cost depends on the
number of series, never on the number of runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter import __version__
from exporter import metrics_spec as m
from exporter.aggregates import Aggregates, Histogram, Key, LabelValues
from exporter.familybuild import FamilyBuilder
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


# The families are built again from what moved since the last build (familybuild.py); one build at a time.
BUILDER = FamilyBuilder()


V = TypeVar("V")


def _by_name(items: dict[Key, V]) -> dict[str, dict[LabelValues, V]]:
    """Counters or histograms per metric name: one pass for all the families."""
    out: dict[str, dict[LabelValues, V]] = {}
    for (name, labels), value in items.items():
        values = out.get(name)
        if values is None:
            values = out[name] = {}
        values[labels] = value
    return out


@dataclass(frozen=True, slots=True)
class _Build:
    """One build: each kind of family made by the builder, from the snapshot (counters and histograms grouped
    by metric name once)."""

    b: FamilyBuilder
    counters: dict[str, dict[LabelValues, float]]
    histograms: dict[str, dict[LabelValues, Histogram]]

    def counter(self, spec: MetricSpec, extra: tuple[str, ...], label_sets: Iterable[LabelValues]) -> Metric:
        like = _counter(spec, extra)
        return self.b.simple(like, like.name + "_total", tuple(spec.label_names(extra)),
                             self.b.zero_keys(spec, label_sets), self.counters.get(spec.name, {}), found=True)

    def histogram(self, spec: MetricSpec, extra: tuple[str, ...], label_sets: Iterable[LabelValues]) -> Metric:
        return self.b.histogram(_histogram(spec, extra), tuple(spec.label_names(extra)),
                                self.b.zero_keys(spec, label_sets, bare=not spec.zeros),
                                self.histograms.get(spec.name, {}), Histogram.empty(BUCKETS[spec.name]))

    def gauge(self, spec: MetricSpec, extra: tuple[str, ...], values: dict[LabelValues, float],
              label_sets: Iterable[LabelValues]) -> Metric:
        like = _gauge(spec, extra)
        return self.b.simple(like, like.name, tuple(spec.label_names(extra)), self.b.zero_keys(spec, label_sets),
                             values, found=False)

    def single(self, spec: MetricSpec, values: dict[LabelValues, float]) -> Metric:
        """A gauge of these series, in this order."""
        like = _gauge(spec)
        return self.b.simple(like, like.name, tuple(spec.label_names(())), self.b.listed(spec.name, list(values)),
                             values, found=False)


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


def _run_families(run: _Build, snap: Snapshot) -> list[Metric]:
    extra, label_sets, ratios = snap.extra, snap.label_sets, snap.ratios
    counts = {key: float(n) for key, n in snap.status_counts.items()}
    ages = {key: round(age, 3) for key, age in snap.oldest_ages.items()}
    return [
        run.gauge(m.RUNS, extra, counts, label_sets),
        run.counter(m.RUNS_FINISHED, extra, label_sets),
        run.histogram(m.STATUS_DURATION, extra, label_sets),
        run.histogram(m.RUN_DURATION, extra, label_sets),
        run.gauge(m.OLDEST_AGE, extra, ages, label_sets),
        run.gauge(m.FAILURE_RATIO, extra,
                      {k[1:]: v for k, v in ratios.items() if k[0] == "failure"}, label_sets),
        run.gauge(m.EXPIRY_RATIO, extra,
                      {k[1:]: v for k, v in ratios.items() if k[0] == "expiry"}, label_sets),
        run.counter(m.ERRORS, extra, label_sets),
        run.counter(m.INCOMPLETE, extra, label_sets),
        run.counter(m.TOKENS, extra, label_sets),
    ]


def _exporter_families(run: _Build, snap: Snapshot) -> list[Metric]:
    state, api_sources = snap.state, snap.api_sources
    none: list[LabelValues] = [()]
    sources = sorted({*api_sources, *state.api_up})
    fams: list[Metric] = [run.single(m.API_UP, {(source,): state.api_up.get(source, 0.0) for source in sources}),
                          run.counter(m.API_REQUESTS, (), ())]
    if state.rate_limit_remaining is not None:
        fams.append(run.single(m.RATE_LIMIT_REMAINING, {(): state.rate_limit_remaining}))
    fams.append(run.histogram(m.POLL_DURATION, (), none))
    fams.append(run.single(m.LAST_POLL_SUCCESS, {(): state.last_poll_success}))
    fams.append(run.gauge(m.THREADS, (), {(k,): float(v) for k, v in snap.scope_states.items()}, none))
    fams.append(run.counter(m.INVALID_OBJECTS, (), none))
    fams.append(run.counter(m.PUSH_REQUESTS, (), ()))
    fams.append(run.counter(m.PUSH_ITEMS, (), none))
    fams.append(run.counter(m.WEBHOOKS, (), ()))
    for spec in (m.DISCOVERED_THREADS, m.STORE_ERRORS):
        fams.append(run.counter(spec, (), none))
    fams.append(run.counter(m.LABEL_OVERFLOW, (), none))
    fams.append(run.single(m.SHARD, {(str(state.shard[0]), str(state.shard[1])): 1}))
    fams.append(run.single(m.BUILD_INFO, {(__version__,): 1}))
    return fams


def families(snap: Snapshot, builder: FamilyBuilder | None = None) -> list[Metric]:
    """The families of a snapshot, on any thread; one build at a time per builder, which keeps what it built
    last."""
    agg = snap.aggregates
    run = _Build(builder or BUILDER, _by_name(agg.counters), _by_name(agg.histograms))
    with run.b.lock:  # collectors of several servers in one process (tests) share the module's builder
        return _run_families(run, snap) + _exporter_families(run, snap)


def build_families(tracker: Tracker, state: ExporterState, now: float, run_sources: Sequence[str] = (),
                   api_sources: Sequence[str] = (), builder: FamilyBuilder | None = None) -> list[Metric]:
    return families(snapshot(tracker, state, now, run_sources, api_sources), builder)
