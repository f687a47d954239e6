"""Families built again from what moved: the same pages as a build from nothing, and as prometheus_client writes."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Sample

from exporter import metrics_spec as m
from exporter.aggregates import Histogram, LabelValues
from exporter.exposition import BuiltFamily, Families, Renderer
from exporter.familybuild import FamilyBuilder
from exporter.metrics import ExporterState, families, snapshot
from exporter.model import RunSnapshot
from exporter.pages import gzip_page
from exporter.tracker import Tracker

T0 = 1_700_000_000
ENCODERS = [choose_encoder(accept)[0] for accept in ("", "application/openmetrics-text; version=1.0.0")]
GAUGE, COUNTER, HIST = m.RUNS, m.ERRORS, m.RUN_DURATION
VALUES = st.sampled_from([0.0, -0.0, 1.0, 1, 2.5, -3.0, 1e300, float("inf"), float("nan"), 1_700_000_020.0])
SETS: st.SearchStrategy[list[LabelValues]] = st.lists(
    st.tuples(st.sampled_from(["threads", "push"]), st.sampled_from(["a", "b", 'q"\\'])),
    min_size=1, max_size=4, unique=True)


def _changed_positions(base: BuiltFamily, family: BuiltFamily) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(base.samples, family.samples, strict=True)) if a is not b]


@dataclass
class Step:
    """The values of one build."""

    gauge: dict[LabelValues, float]
    counter: dict[LabelValues, float]
    hist: dict[LabelValues, Histogram]


def _assert_pages(warm: list[BuiltFamily], label_sets: list[LabelValues], step: Step,
                  renderers: list[Renderer]) -> None:
    cold = _build(FamilyBuilder(), label_sets, step)
    for encoder, renderer in zip(ENCODERS, renderers, strict=True):
        expected = encoder(Families(cold))
        assert encoder(Families(warm)) == expected  # the samples themselves are those of a build from nothing
        assert renderer.render(warm, encoder) == expected  # and the kept lines are written over exactly


def _build(b: FamilyBuilder, label_sets: list[LabelValues], step: Step) -> list[BuiltFamily]:
    gauge_like = GaugeMetricFamily(GAUGE.name, GAUGE.help, labels=list(GAUGE.label_names(("assistant_id",))))
    names = tuple(GAUGE.label_names(("assistant_id",)))
    hist_like = HistogramMetricFamily(HIST.name, HIST.help, labels=list(HIST.label_names(("assistant_id",))))
    return [
        b.simple(gauge_like, GAUGE.name, names, b.zero_keys(GAUGE, label_sets), step.gauge, found=False),
        b.simple(gauge_like, GAUGE.name + "_found", names, b.zero_keys(COUNTER, label_sets), step.counter,
                 found=True),
        b.histogram(hist_like, tuple(HIST.label_names(("assistant_id",))), b.zero_keys(HIST, label_sets),
                    step.hist, Histogram.empty((1.0, 10.0))),
    ]


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[list[LabelValues], Step]]:
    """Builds in a row: label sets that sometimes change, values that move, appear and go."""
    label_sets: list[LabelValues] = draw(SETS)
    hists: dict[LabelValues, Histogram] = {}
    steps = []
    for _ in range(draw(st.integers(2, 6))):
        if draw(st.booleans()) and draw(st.booleans()):
            label_sets = draw(SETS)
        keys = [(status, *ls) for ls in label_sets for status in ("queued", "failed", "unknown")]
        gauge = draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=6))
        counter = draw(st.dictionaries(st.sampled_from([*keys, ("other", "threads", "z")]), VALUES, max_size=6))
        hists = {k: h for k, h in hists.items() if draw(st.booleans()) or not draw(st.booleans())}
        for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
            old = hists.get(key, Histogram.empty((1.0, 10.0)))
            new = Histogram(old.bounds, old.counts.copy(), old.sum, old.count)  # snapshots copy what moves
            new.observe(draw(st.sampled_from([0.5, 3.0, 20.0, -0.0])))
            hists[key] = new
        steps.append((sorted(label_sets), Step(gauge, counter, dict(hists))))
    return steps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps())
def test_builds_from_what_moved_write_what_a_build_from_nothing_writes(
        steps: list[tuple[list[LabelValues], Step]]) -> None:
    builder, renderers = FamilyBuilder(), [Renderer(), Renderer()]
    last: list[BuiltFamily] = []
    for label_sets, step in steps:
        warm = _build(builder, label_sets, step)
        _assert_pages(warm, label_sets, step, renderers)
        for before, after in zip(last or warm, warm, strict=True):
            if after is not before and after.base is not None:  # built from `before`: names what differs
                assert after.base is before
                assert sorted(after.changed) == _changed_positions(before, after)
                assert before.base is None  # older families are let go
        last = warm


def _pushed(tracker: Tracker, i: int, status: str, now: float) -> None:
    tracker.observe_run(RunSnapshot(f"p{i}", "", status, T0, assistant_id=f"a{i % 3}", source="push",
                                    started_at=T0 + 1, completed_at=T0 + 5, failed_at=T0 + 5,
                                    error_code="server_error" if status == "failed" else None), now)


def test_the_exporters_pages_under_pushes_equal_a_build_from_nothing() -> None:
    tracker = Tracker(["assistant_id"], 3600)
    builder, renderer = FamilyBuilder(), Renderer()
    encoder = ENCODERS[1]
    state = ExporterState(api_up={"threads": 1.0})
    unchanged = 0
    for step in range(12):
        now = T0 + 10 + step * 0.2
        if step % 4 != 3:  # every fourth step nothing happens: what is unchanged is handed over again
            _pushed(tracker, step, "in_progress", now)
            _pushed(tracker, step - 1, ("completed", "failed", "expired")[step % 3], now)
        snap = snapshot(tracker, state, now, ("threads", "push"), ("threads",))
        before = [kept.family for kept in builder._kept.values()]
        warm = families(snap, builder)
        if step % 4 == 3:
            unchanged += sum(1 for family in warm if family in before)
        cold = families(snap, FamilyBuilder())
        assert renderer.render(warm, encoder) == encoder(Families(cold)) == encoder(Families(warm))
    assert unchanged > 10  # most families did not move in the quiet steps, and were handed over as they were
    assert builder.moved > 30  # the others were built from what moved, not whole


def test_a_renderer_rewrites_only_the_lines_a_family_names_and_renders_others_whole() -> None:
    base_samples = [Sample("g", {"k": str(i)}, float(i), None) for i in range(3)]
    like = GaugeMetricFamily("g", "help")
    base = BuiltFamily(like, base_samples)
    renderer, encoder = Renderer(), ENCODERS[0]
    renderer.render([base], encoder)
    moved = base_samples.copy()
    moved[1] = Sample("g", base_samples[1].labels, 10.0, None)
    moved[2] = Sample("g", base_samples[2].labels, 20.0, None)
    told = BuiltFamily(like, moved, base, [1])  # names position 1 only: position 2's line stays the base's
    assert renderer.render([told], encoder).splitlines()[-2:] == [b'g{k="1"} 10.0', b'g{k="2"} 2.0']
    fresh = Renderer()  # never rendered the base: writes every line
    assert fresh.render([told], encoder) == encoder(Families([told]))


def test_pages_are_gzip_members_that_every_reader_takes() -> None:
    page = b"".join(b'm{k="%d"} %d.0\n' % (i, i) for i in range(20_000))
    body = gzip_page(page)
    assert body[:3] == b"\x1f\x8b\x08" and len(body) < len(page) // 3
    assert gzip.decompress(body) == page
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body) == page
