"""Families built again from what moved since the last build.

A page has ~11,000 series, of which a few hundred move between two builds under a stream of pushes. Each
family keeps its keys, their positions, the values it was built from and the family built. The next build
compares the new values with those in C (dict and set operations), replaces only the samples of the keys that
moved, and hands over a BuiltFamily naming their positions, so that the renderer (exposition.py) rewrites only
those lines. A family whose values did not move is handed over again, as the same object.

Exactness rests on three rules. A key's position changes only when the keys change; the family is then built
again whole (still reusing the samples and labels dicts of keys whose values did not move). A value is written
as `value + 0.0`, so values that compare equal (0.0 and -0.0, 1 and 1.0) are written alike. Histograms handed
in are never changed once handed in (metrics.snapshot copies them), so the same object means the same values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from exporter.aggregates import Histogram, LabelValues
from exporter.exposition import BuiltFamily
from exporter.metrics_spec import MetricSpec

# A family's zero keys (exported at zero until they occur): as built, sorted, as a set. Shared between builds
# while the label sets are the same object: never changed.
ZeroKeys = tuple[list[LabelValues], list[LabelValues], frozenset[LabelValues]]
_NO_EXTRA: frozenset[LabelValues] = frozenset()


@dataclass(slots=True)
class _Kept:
    """What a family was last built from, and the family."""

    zero: ZeroKeys
    extra: Iterable[LabelValues]  # the keys found beyond the zero keys (a set)
    keys: list[LabelValues]  # in the order of the family's series
    index: dict[LabelValues, int]  # key -> its series' position
    values: Mapping[LabelValues, Any]  # floats, or Histograms (each series then has `stride` samples)
    family: BuiltFamily


def _same_value(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN is written alike however it came


def histogram_samples(name: str, names: tuple[str, ...], labels: LabelValues, hist: Histogram,
                      before: list[Sample] | None) -> list[Sample]:
    """What HistogramMetricFamily.add_metric(labels, hist.cumulative(), hist.sum) appends, sample for sample;
    reusing the samples `before` of the same series whose values are unchanged, and their labels dicts."""
    if before is None or len(before) != len(hist.counts) + 2:
        buckets = hist.cumulative()
        base = dict(zip(names, labels, strict=True))
        out = [Sample(name + "_bucket", {**base, "le": le}, value, None, None) for le, value in buckets]
        out.append(Sample(name + "_count", dict(base), buckets[-1][1], None))
        out.append(Sample(name + "_sum", dict(base), hist.sum + 0.0, None))
        return out
    values: list[float] = list(accumulate(hist.counts))  # the buckets' (cumulative) values, then count and sum
    values += (values[-1], hist.sum)
    # A NaN sum never equals itself: it is written again each time, alike.
    return [old if old.value == value else Sample(old.name, old.labels, value + 0.0, None, None)
            for old, value in zip(before, values, strict=True)]


class FamilyBuilder:
    """Builds families from values, again from what moved. One build at a time: callers hold `lock` over the
    families of one page (what each compares with is the family of the last build)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # By (how the keys are made, metric name): "zeros", "bare" (zero_keys) or "listed".
        self._zero: dict[tuple[str, str], tuple[list[LabelValues], ZeroKeys]] = {}
        self._kept: dict[tuple[str, str], _Kept] = {}
        self.whole = 0  # families built whole, for tests
        self.moved = 0  # families built again from what moved

    def zero_keys(self, spec: MetricSpec, label_sets: Iterable[LabelValues], bare: bool = False) -> ZeroKeys:
        """Every (first label value, *label set) combination of the spec's zeros (`bare`: the label sets
        themselves, for a histogram without such a label); the same object while the label sets are equal."""
        sets = label_sets if isinstance(label_sets, list) else list(label_sets)
        kind = ("bare" if bare else "zeros", spec.name)
        cached = self._zero.get(kind)
        if cached is None or cached[0] != sets:
            keys = list(sets) if bare else [(v, *ls) for ls in sets for v in spec.zeros]
            cached = self._zero[kind] = (sets, (keys, sorted(keys), frozenset(keys)))
        return cached[1]

    def listed(self, name: str, keys: list[LabelValues]) -> ZeroKeys:
        """Keys exported in the order given (a few: the exporter's own gauges); the same object while equal."""
        cached = self._zero.get(("listed", name))
        if cached is None or cached[0] != keys:
            cached = self._zero[("listed", name)] = (keys, (keys, keys, frozenset(keys)))
        return cached[1]

    def _keys(self, zero: ZeroKeys, values: Mapping[LabelValues, Any], found: bool,
              kept: _Kept | None) -> tuple[list[LabelValues], Iterable[LabelValues]]:
        """The family's keys: the zero keys, and (`found`) the keys of `values` beyond them, all sorted. The
        kept list while they are the same, which is what lets a build replace only what moved."""
        as_built, ordered, known = zero
        extra: Iterable[LabelValues] = values.keys() - known if found else _NO_EXTRA
        if kept is not None and kept.zero is zero and kept.extra == extra:
            return kept.keys, extra
        if not found:
            return as_built, extra
        return (sorted([*ordered, *extra]) if extra else ordered), extra

    def simple(self, like: Metric, sample_name: str, names: tuple[str, ...], zero: ZeroKeys,
               values: Mapping[LabelValues, float], found: bool) -> BuiltFamily:
        """A gauge or counter family like `like` with one sample per key, valued from `values` (0 if absent).
        `values` is kept: it must not change afterwards."""
        kept = self._kept.get((like.type, sample_name))
        keys, extra = self._keys(zero, values, found, kept)
        if kept is not None and keys is kept.keys:
            if values == kept.values:
                return kept.family
            samples = kept.family.samples.copy()
            positions = []
            index = kept.index
            moved = [*(values.items() - kept.values.items()), *((k, 0.0) for k in kept.values.keys() - values.keys())]
            for key, value in moved:
                i = index.get(key)
                if i is not None and not _same_value(samples[i].value, value):
                    samples[i] = Sample(sample_name, samples[i].labels, value + 0.0, None)
                    positions.append(i)
            return self._moved(kept, values, samples, positions)
        before, index = (kept.family.samples, kept.index) if kept is not None else ([], {})
        samples = []
        value_of = values.get
        for key in keys:
            value = value_of(key, 0.0)
            i = index.get(key)
            if i is None:
                sample = Sample(sample_name, dict(zip(names, key, strict=True)), value + 0.0, None)
            else:
                sample = before[i]
                if not _same_value(sample.value, value):
                    sample = Sample(sample_name, sample.labels, value + 0.0, None)
            samples.append(sample)
        return self._whole((like.type, sample_name), like, zero, extra, keys, values, samples)

    def histogram(self, like: Metric, names: tuple[str, ...], zero: ZeroKeys,
                  found: Mapping[LabelValues, Histogram], empty: Histogram) -> BuiltFamily:
        """A histogram family like `like`: one series per key, `empty` where a key has none. `found` is kept."""
        key_of = (like.type, like.name)
        kept = self._kept.get(key_of)
        keys, extra = self._keys(zero, found, True, kept)
        stride = len(empty.counts) + 2  # buckets, _count, _sum
        if kept is not None and keys is kept.keys:
            old = kept.values
            moved = [k for k, hist in found.items() if old.get(k) is not hist]
            moved += old.keys() - found.keys()
            if not moved:
                return kept.family
            samples = kept.family.samples.copy()
            positions: list[int] = []
            for key in moved:
                i = kept.index.get(key)
                if i is None:
                    continue
                start = i * stride
                before = samples[start:start + stride]
                after = histogram_samples(like.name, names, key, found.get(key, empty), before)
                positions.extend(start + j for j, (a, b) in enumerate(zip(before, after, strict=True)) if a is not b)
                samples[start:start + stride] = after
            return self._moved(kept, found, samples, positions)
        samples = []
        for key in keys:
            i = kept.index.get(key) if kept is not None else None
            last = kept.family.samples[i * stride:(i + 1) * stride] if kept is not None and i is not None else None
            samples.extend(histogram_samples(like.name, names, key, found.get(key, empty), last))
        return self._whole(key_of, like, zero, extra, keys, found, samples)

    def _moved(self, kept: _Kept, values: Mapping[LabelValues, Any], samples: list[Sample],
               positions: list[int]) -> BuiltFamily:
        if not positions:  # what moved is written alike (0.0 and -0.0, or a key gone at 0)
            kept.values = values
            return kept.family
        family = BuiltFamily(kept.family, samples, kept.family, positions)
        kept.family.base = None  # what the renderer needs is one step back; older families can go
        kept.values, kept.family = values, family
        self.moved += 1
        return family

    def _whole(self, key_of: tuple[str, str], like: Metric, zero: ZeroKeys, extra: Iterable[LabelValues],
               keys: list[LabelValues], values: Mapping[LabelValues, Any], samples: list[Sample]) -> BuiltFamily:
        family = BuiltFamily(like, samples)
        self._kept[key_of] = _Kept(zero, extra, keys, {key: i for i, key in enumerate(keys)}, values, family)
        self.whole += 1
        return family
