"""The cached renderer writes exactly what prometheus_client's encoders write, for every format served."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.samples import Exemplar, Sample

from exporter.exposition import Families, Renderer
from exporter.metrics import ExporterState, build_families
from exporter.model import RunSnapshot
from exporter.tracker import Tracker
from tests.helpers import require_binary

T0 = 1_700_000_000
ACCEPTS = (
    "",  # text 0.0.4
    "text/plain; version=0.0.4",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text",
    # What Prometheus 3 sends first, and its text/plain 1.0.0 with UTF-8 names allowed.
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.3",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
)
ENCODERS = [choose_encoder(accept)[0] for accept in ACCEPTS]
SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    1e-7,
    0.1,
    1.5,
    123456.0,
    1234567.0,
    1_700_000_020.0,
    2.0**53,
    1e300,
    float("inf"),
    float("-inf"),
    float("nan"),
    10**17,
    7,
    True,
    5e-324,
]


def _reference(families: list[Metric], encoder: text_format.Encoder) -> bytes:  # type: ignore[name-defined]
    return encoder(Families(families))  # type: ignore[no-any-return]


def _assert_same(families: list[Metric], renderer: Renderer | None = None) -> None:
    renderer = renderer or Renderer()
    for encoder in ENCODERS:
        assert renderer.render(families, encoder) == _reference(families, encoder)


def _sample_families(values: list[float], label_values: list[str]) -> list[Metric]:
    gauge = GaugeMetricFamily("g", 'a gauge\nwith \\ and "quotes"', labels=["k", "a_b"])
    counter = CounterMetricFamily("c", "a counter", labels=["k"])
    counter_created = CounterMetricFamily("cc", "created", labels=["k"], created=1.5)
    hist = HistogramMetricFamily("h", "a histogram", labels=["k"])
    for i, value in enumerate(values):
        label = label_values[i % len(label_values)] if label_values else ""
        gauge.add_metric([label, str(i)], value)
        counter.add_metric([f"{label}{i}"], abs(value) if not math.isnan(value) else value)
    for label in label_values[:3] or [""]:
        hist.add_metric([label], [("0.5", 1.0), ("1", 2.0), ("+Inf", 3.0)], 2.25)
        counter_created.add_metric([label], 4.0, created=1_700_000_000.25)
    unlabelled = GaugeMetricFamily("u", "")
    unlabelled.add_metric([], 42)
    return [gauge, counter, counter_created, hist, unlabelled]


def test_special_values_and_every_format() -> None:
    _assert_same(_sample_families(SPECIAL, ["a", 'q"uote', "back\\slash", "new\nline", "ünï©ødé", "", "😀"]))


def test_the_exporters_own_families() -> None:
    tracker = Tracker(["assistant_id", "model"], 3600)
    tracker.observe_listing("t", [], T0, complete=True, ok=True)
    runs = [
        RunSnapshot(
            f"r{i}",
            "t",
            "failed" if i % 3 == 0 else "in_progress",
            T0 + 1,
            assistant_id=f"a{i % 4}",
            model='m"\\\n',
            started_at=T0 + 2,
            failed_at=T0 + 5,
        )
        for i in range(50)
    ]
    tracker.observe_listing("t", runs, T0 + 10, complete=True, ok=True)
    renderer = Renderer()
    for step in range(3):  # the second and third renders reuse the kept text
        tracker.aggregates.observe("assistants_run_duration_seconds", ("failed", "threads", "a1", 'm"\\\n'), step)
        families = build_families(
            tracker,
            ExporterState(rate_limit_remaining=42, api_up={"threads": 1.0}),
            T0 + 20 + step,
            ("threads",),
            ("threads",),
        )
        _assert_same(families, renderer)
    assert renderer.fallbacks == 0


def test_samples_kept_between_renders_show_their_new_values() -> None:
    renderer = Renderer()
    kept = Sample("g", {"k": "v"}, 1.0)
    for value in (1.0, 2.0, -0.0, 0.0, float("nan")):
        fam = GaugeMetricFamily("g", "g", labels=["k"])
        fam.samples = [kept, Sample("g", {"k": "w"}, value)]
        _assert_same([fam], renderer)


_label_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(['"', "\\", "\n", "\\n", ""])
_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20) | st.sampled_from(SPECIAL)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(_values, min_size=1, max_size=12),
    labels=st.lists(_label_text, max_size=6),
    again=st.lists(_values, min_size=1, max_size=12),
)
def test_generated_label_values_and_floats(values: list[float], labels: list[str], again: list[float]) -> None:
    renderer = Renderer()
    _assert_same(_sample_families(values, labels), renderer)
    _assert_same(_sample_families(again, labels), renderer)  # kept prefixes, new values


def test_what_is_not_reproduced_falls_back_to_prometheus_client() -> None:
    with_timestamp = GaugeMetricFamily("t", "t")
    with_timestamp.add_metric([], 1.0, timestamp=12.5)
    with_exemplar = CounterMetricFamily("e", "e")
    with_exemplar.samples.append(Sample("e_total", {}, 1.0, None, Exemplar({"trace": "x"}, 1.0)))
    colon = GaugeMetricFamily("a:b", "colon in the name")
    colon.add_metric([], 1.0)
    odd = GaugeMetricFamily("o", "o", labels=["k"])
    odd.samples.append(Sample("o", {"k": 3}, 1.0))  # type: ignore[dict-item]
    others = [SummaryMetricFamily("s", "s", count_value=3, sum_value=1.5), InfoMetricFamily("i", "i", {"a": "b"})]
    for fam in (with_timestamp, with_exemplar, colon, odd):
        renderer = Renderer()
        for encoder in ENCODERS:
            try:
                expected = _reference([fam, *others], encoder)
            except Exception as exc:
                try:
                    renderer.render([fam, *others], encoder)
                except Exception as mine:
                    assert type(mine) is type(exc)
                    continue
                raise AssertionError("rendered what prometheus_client refuses") from exc
            assert renderer.render([fam, *others], encoder) == expected
        assert renderer.fallbacks > 0
    for escaping in (om_format.DOTS, om_format.VALUES):
        encoder = functools.partial(om_format.generate_latest, escaping=escaping, version="1.0.0")
        families = _sample_families([1.0], ["x"])
        assert Renderer().render(families, encoder) == _reference(families, encoder)


def test_promtool_accepts_a_rendered_exporter_page(tmp_path: object) -> None:
    promtool = require_binary("promtool")
    sys.path.insert(0, "bench")
    from bench_scrape import _tracker  # the bench's fleet: many assistants, every status

    tracker = _tracker(2000, 10)
    families = build_families(
        tracker, ExporterState(rate_limit_remaining=1, api_up={"threads": 1.0}), T0 + 60, ("threads",), ("threads",)
    )
    page = Renderer().render(families, choose_encoder("")[0])
    result = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_series_of_new_label_dicts_every_render_are_forgotten_and_kept_ones_stay() -> None:
    """A collector that hands out new label dicts each time (prometheus_client's own) must not grow the kept
    text without bound; series whose samples are kept stay kept."""
    renderer = Renderer()
    stable = GaugeMetricFamily("s", "stable", labels=["k"])
    stable.add_metric(["x"], 1.0)
    for step in range(300):
        fresh = GaugeMetricFamily("f", "fresh", labels=["k"])
        for i in range(10):
            fresh.add_metric([str(i)], step)
        _assert_same([stable, fresh], renderer)
        assert len(renderer._series) <= 1100
    assert id(stable.samples[0].labels) in renderer._series
