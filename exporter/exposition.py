"""The /metrics text, written close to the cost of copying bytes.

prometheus_client's encoders validate and escape every label name and value of every line on every render:
at ~10,000 series that is most of a core when a page is rendered five times a second. Here each series'
text up to its value (name and escaped labels) is kept, found by its labels dict (the metrics layer hands a
series' samples the same dict from build to build; samples and their dicts are never changed once handed
over), a line whose Sample object was already rendered is reused whole, and only new values are formatted
(with prometheus_client's own floatToGoString). A BuiltFamily (familybuild.py) goes further: its text is kept
whole, and the next family built from it rewrites only the lines at the positions it names as changed, so a
render costs what moved (a tenth of the lines under pushes) plus copying the rest.

The output is byte-identical to prometheus_client's text 0.0.4 and OpenMetrics 1.0 encoders (tests/
test_exposition.py compares them on generated families). Anything outside what is reproduced here (timestamps,
exemplars, native histograms, names outside the legacy character set, the `dots` and `values` escapings,
non-string label values) is handed to prometheus_client's encoder, so the answer is always theirs.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _go_float

Encoder = Callable[[Any], bytes]
floatToGoString: Callable[[Any], str] = _go_float  # untyped upstream: how both encoders write every value

# Legacy names only, and no colon: OpenMetrics' underscore escaping rewrites ':' in sample names.
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPINGS = (om_format.UNDERSCORES, om_format.ALLOWUTF8)  # both leave legacy names as they are
_TEXT_SPLIT_SUFFIXES = ("_created", "_gsum", "_gcount")  # text 0.0.4 moves these into gauges after the family
_TEXT_SUFFIXES = {"counter": "_total", "info": "_info"}  # text 0.0.4 names these families by their samples
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_VALUE_MEMO_MAX = 100_000


class Fallback(Exception):
    """Something this renderer does not reproduce exactly: prometheus_client renders the page."""


class BuiltFamily(Metric):
    """A family that names which of its samples differ from those of the family it was built from (`base`),
    by position: a renderer that last rendered `base` rewrites only their lines. Neither family nor their
    samples are changed once handed over (the builder may only drop `base`, to let older families go)."""

    def __init__(self, like: Metric, samples: list[Sample], base: BuiltFamily | None = None,
                 changed: Sequence[int] = ()) -> None:
        super().__init__(like.name, like.documentation, like.type, like.unit)
        self.samples = samples
        self.base = base
        self.changed = changed


@dataclass(slots=True)
class _FamilyText:
    """A BuiltFamily's lines as last rendered, and its text per format (OpenMetrics or not)."""

    family: Metric
    lines: list[str]
    split: bool = False  # it has samples that the text format moves out of the family: written as any other
    texts: dict[bool, bytes] = field(default_factory=dict)
    seen: int = 0  # the last render that wrote it


class Families:
    """A fixed list of families with the registry's collect(): what prometheus_client's encoders read."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _escape_value(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value  # most values: nothing to escape, no copies
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _format(encoder: Encoder) -> tuple[bool, str] | None:
    """(OpenMetrics?, escaping) of an encoder that choose_encoder() hands out, or None if not reproduced."""
    func, kwargs = encoder, {}
    if isinstance(encoder, functools.partial):
        func, kwargs = encoder.func, dict(encoder.keywords)
        if encoder.args:
            return None
    escaping = kwargs.pop("escaping", om_format.UNDERSCORES)
    kwargs.pop("version", None)  # only decides whether native histograms are written: those fall back
    if kwargs or escaping not in _ESCAPINGS:
        return None
    if func is text_format.generate_latest:
        return False, escaping
    if func is om_format.generate_latest:
        return True, escaping
    return None


_valid_names: set[str] = set()  # names already checked (a few dozen: metric, sample and label names)


def _check_name(name: str) -> str:
    if name not in _valid_names:
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise Fallback(name)
        _valid_names.add(name)
    return name


class Renderer:
    """Renders lists of families; keeps the text of series between renders. Thread-safe (one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per series, by the identity of its labels dict (the metrics layer hands a series' samples the same
        # dict from build to build): [the dict, kept alive so that its id stays its own; sample name; text up
        # to the value; the last sample rendered; its line]. Updated in place: a render of unchanged samples
        # allocates nothing per line, which keeps the garbage collector's young collections rare and short.
        self._series: dict[int, list[Any]] = {}
        self._families: dict[str, _FamilyText] = {}  # BuiltFamilies by name
        self._values: dict[float, str] = {}
        self._renders = 0
        self.fallbacks = 0  # renders handed to prometheus_client

    def render(self, families: Sequence[Metric], encoder: Encoder) -> bytes:
        """What `encoder(registry)` returns for a registry whose collect() yields `families`."""
        fmt = _format(encoder)
        if fmt is not None:
            with self._lock:
                try:
                    return self._render(families, *fmt)
                except Exception:  # Fallback, or bad input: prometheus_client decides what the error looks like
                    pass
        self.fallbacks += 1
        return encoder(Families(families))

    def _render(self, families: Sequence[Metric], openmetrics: bool, escaping: str) -> bytes:
        self._renders += 1
        out: list[bytes] = []
        for metric in families:
            text = self._built_text(metric, openmetrics) if type(metric) is BuiltFamily else None
            if text is None:
                parts: list[str] = []
                if openmetrics:
                    self._om_family(metric, parts)
                else:
                    self._text_family(metric, parts)
                text = "".join(parts).encode("utf-8")
            out.append(text)
        if openmetrics:
            out.append(b"# EOF\n")
        self._forget(families)
        return b"".join(out)

    def _forget(self, families: Sequence[Metric]) -> None:
        """Drop the text of series and families no longer on the page (threads left, or new dicts came)."""
        if len(self._families) > 2 * len(families) + 64:
            self._families = {name: kept for name, kept in self._families.items() if kept.seen == self._renders}
        if len(self._series) > 2 * sum(len(metric.samples) for metric in families) + 1000:
            live = {id(sample.labels) for metric in families for sample in metric.samples}
            self._series = {key: kept for key, kept in self._series.items() if key in live}

    def _built_text(self, metric: BuiltFamily, openmetrics: bool) -> bytes | None:
        """A BuiltFamily's text: kept whole while it is the same family, else its base's lines with the changed
        ones rewritten, else written line by line. None for what the text format splits (then written as any
        other family)."""
        kept = self._families.get(metric.name)
        if kept is None or kept.family is not metric:
            base = metric.base
            if kept is not None and base is not None and kept.family is base and not kept.split:
                lines = kept.lines.copy()
                samples, changed = metric.samples, metric.changed
                written: list[str] = []
                self._lines_of([samples[i] for i in changed], written.append)
                for i, line in zip(changed, written, strict=True):
                    lines[i] = line
                kept = _FamilyText(metric, lines)
            else:
                lines = []
                self._lines_of(metric.samples, lines.append)
                specials = _split_names(metric)
                kept = _FamilyText(metric, lines, split=any(sample.name in specials for sample in metric.samples))
            self._families[metric.name] = kept
        kept.seen = self._renders
        if kept.split and not openmetrics:
            return None
        text = kept.texts.get(openmetrics)
        if text is None:
            header = _om_header(metric) if openmetrics else _text_header(metric, _TEXT_SUFFIXES.get(metric.type, ""))
            text = kept.texts[openmetrics] = (header + "".join(kept.lines)).encode("utf-8")
        return text

    def _text_family(self, metric: Metric, out: list[str]) -> None:
        out.append(_text_header(metric, _TEXT_SUFFIXES.get(metric.type, "")))
        specials = _split_names(metric)
        samples = metric.samples
        if not any(sample.name in specials for sample in samples):
            self._lines_of(samples, out.append)
            return
        split: dict[str, list[str]] = {}
        for sample in samples:
            if sample.name in specials:
                self._lines_of([sample], split.setdefault(sample.name, []).append)
            else:
                self._lines_of([sample], out.append)
        for split_name, split_lines in sorted(split.items()):  # sorted by name: by suffix, as the encoder does
            out.append(f"# HELP {_check_name(split_name)} {_text_doc(metric.documentation)}\n"
                       f"# TYPE {split_name} gauge\n")
            out.extend(split_lines)

    def _om_family(self, metric: Metric, out: list[str]) -> None:
        out.append(_om_header(metric))
        self._lines_of(metric.samples, out.append)

    def _lines_of(self, samples: Sequence[Sample], append: Callable[[str], None]) -> None:
        """Appends the text of each sample: its series' last line if it is the same sample object, else the
        series' kept text up to the value and the value. One loop with everything local: it is the page's cost."""
        series = self._series
        series_of = series.get
        value_of = self._values.get
        for sample in samples:
            labels = sample.labels
            kept = series_of(id(labels))
            if kept is not None and kept[3] is sample:  # the same immutable sample as in the last render
                append(kept[4])
                continue
            name, _, value, timestamp, exemplar, native_histogram = sample
            if timestamp is not None or exemplar or native_histogram or value is None:
                raise Fallback(name)  # what prometheus_client writes differently per format
            if kept is None or kept[0] is not labels or kept[1] != name:
                kept = series[id(labels)] = [labels, name, _prefix(name, labels), None, ""]
            text = value_of(value) if value else None
            if text is None:
                text = self._value(value)
            line = f"{kept[2]}{text}\n"
            kept[3] = sample
            kept[4] = line
            append(line)

    def _value(self, value: float) -> str:
        if type(value) is not float and type(value) is not int:
            return floatToGoString(value)
        if value == 0:  # -0.0 == 0.0 as a key: keep the sign out of the memo
            return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
        text = self._values.get(value)
        if text is None:
            text = floatToGoString(value)
            if value == value:  # NaN never finds itself in a dict
                if len(self._values) >= _VALUE_MEMO_MAX:
                    self._values.clear()
                self._values[value] = text
        return text


def _split_names(metric: Metric) -> set[str]:
    """The sample names that the text format moves out of the family into gauges of their own."""
    return {metric.name + suffix for suffix in _TEXT_SPLIT_SUFFIXES}


def _text_doc(documentation: str) -> str:
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


def _text_header(metric: Metric, suffix: str) -> str:
    name = metric.name + suffix
    mtype = _TEXT_TYPES.get(metric.type, metric.type)
    return f"# HELP {_check_name(name)} {_text_doc(metric.documentation)}\n# TYPE {name} {mtype}\n"


def _om_header(metric: Metric) -> str:
    name = _check_name(metric.name)
    header = f"# HELP {name} {_escape_value(metric.documentation)}\n# TYPE {name} {metric.type}\n"
    return header + f"# UNIT {name} {metric.unit}\n" if metric.unit else header


def _prefix(name: str, labels: dict[str, str]) -> str:
    """`name{k="v",...} `: labels sorted by name, values escaped as both encoders escape them."""
    _check_name(name)
    if not labels:
        return name + " "
    parts = []
    for key, value in sorted(labels.items()):
        if not isinstance(value, str):
            raise Fallback(name)
        parts.append(f'{_check_name(key)}="{_escape_value(value)}"')
    return f"{name}{{{','.join(parts)}}} "
