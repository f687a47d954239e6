"""Counters and histograms keyed by metric name and label values: what survives restarts."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from exporter.metrics_spec import BUCKETS

LabelValues = tuple[str, ...]
Key = tuple[str, LabelValues]  # (metric name, label values in the metric's label order)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    sum: float = 0.0
    count: int = 0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum += other.sum
        self.count += other.count

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += c
            out.append(("+Inf" if bound == float("inf") else _fmt(bound), float(running)))
        return out


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


@dataclass(slots=True)
class Aggregates:
    """Monotonic state. Every change marks its key dirty so the store writes only what moved."""

    counters: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, Histogram] = field(default_factory=dict)
    dirty_counters: set[Key] = field(default_factory=set)
    dirty_histograms: set[Key] = field(default_factory=set)

    def inc(self, name: str, labels: LabelValues, amount: float = 1.0) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + amount
        self.dirty_counters.add(key)

    def observe(self, name: str, labels: LabelValues, value: float) -> None:
        key = (name, labels)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram.empty(BUCKETS[name])
        hist.observe(value)
        self.dirty_histograms.add(key)

    def counter(self, name: str, labels: LabelValues) -> float:
        return self.counters.get((name, labels), 0.0)

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_counters or self.dirty_histograms)

    def take_dirty(self) -> tuple[dict[Key, float], dict[Key, Histogram]]:
        counters = {k: self.counters[k] for k in self.dirty_counters}
        hists = {k: self.histograms[k] for k in self.dirty_histograms}
        self.dirty_counters.clear()
        self.dirty_histograms.clear()
        return counters, hists
