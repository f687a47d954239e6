"""Pictures of the dashboards' main panels, from a real Prometheus: `python -m mixin.preview --prometheus URL`.

Each picture is drawn with matplotlib from the same PromQL as the dashboards and rules, over the last
`--minutes`, and written to `--out` (default docs/images/). Every PNG carries the hash of the specification
it was drawn from (queries, thresholds) in its metadata, so tests/test_mixin_preview.py notices when the
committed pictures no longer show what the dashboards show. tests/test_e2e_prometheus.py draws them from
the demo on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixin import slo
from mixin.config import DEFAULT, MixinConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "docs" / "images"
SPEC_KEY = "Spec-Hash"  # PNG text chunk holding the hash of the picture's specification
Drawn = list[tuple[str, list[float], list[float]]]  # (line name, timestamps, values)


@dataclass(frozen=True, slots=True)
class Line:
    expr: str
    legend: str  # a label name whose value names the line, or a fixed text prefixed with "="


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    label: str


@dataclass(frozen=True, slots=True)
class Picture:
    file: str
    title: str
    lines: tuple[Line, ...]
    unit: str  # axis label
    stacked: bool = False
    percent: bool = False
    thresholds: tuple[Threshold, ...] = ()

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def pictures(cfg: MixinConfig = DEFAULT) -> list[Picture]:
    t = cfg.thresholds
    buckets = "assistants_run_status_duration_seconds_bucket"
    success = slo.slis(cfg)[0]
    burn_windows = [w for w in cfg.slos.windows if w.severity == "critical"]
    return [
        Picture("runs-by-status.png", "Runs by status (Runs overview)",
                (Line("sum by (status) (assistants_runs)", "status"),), "runs", stacked=True),
        Picture("failure-ratio.png", "Failure ratio over 5m, per assistant (Runs overview)",
                (Line("assistant_id:assistants_run_failure_ratio:rate5m", "assistant_id"),), "failed / finished",
                percent=True, thresholds=(Threshold(t.failure_ratio, "AssistantsRunFailureSpike"),)),
        Picture("time-in-status.png", "Time in status, p50 and p95 (Runs overview)",
                tuple(Line(f"histogram_quantile({q}, sum by (le, status) (rate({buckets}[1m])))", f"status {name}")
                      for q, name in (("0.5", "p50"), ("0.95", "p95"))), "seconds"),
        Picture("burn-rates.png", "Run success burn rate, worst assistant (SLOs)",
                tuple(Line(f"max({success.ratio_record(window)}) / {success.budget():g}", f"={window}")
                      for window in dict.fromkeys(x for w in burn_windows for x in (w.long, w.short))),
                "x budget", thresholds=tuple(Threshold(w.factor, f"page: {w.long}/{w.short}")
                                             for w in burn_windows)),
    ]


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        doc = json.loads(resp.read())
    if doc.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {doc.get('error')}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def line_name(line: Line, metric: dict[str, str]) -> str:
    if line.legend.startswith("="):
        return line.legend[1:]
    label, _, suffix = line.legend.partition(" ")
    return " ".join(x for x in (metric.get(label, ""), suffix) if x) or "(none)"


def draw(picture: Picture, data: Drawn, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # up to 20 lines without repeating a colour
    t0 = min(ts[0] for _, ts, _ in data)
    if picture.stacked:
        grid = sorted({x for _, ts, _ in data for x in ts})
        stacks = [[dict(zip(ts, vs, strict=True)).get(x, 0.0) for x in grid] for _, ts, vs in data]
        ax.stackplot([(x - t0) / 60 for x in grid], stacks, labels=[n for n, _, _ in data], alpha=0.8)
    else:
        for name, ts, vs in data:
            ax.plot([(x - t0) / 60 for x in ts], vs, label=name, linewidth=1.4)
    for th in picture.thresholds:
        ax.axhline(th.value, linestyle="--", color="red", linewidth=1)
        ax.annotate(f"{th.label} ({th.value:.0%})" if picture.percent else f"{th.label} ({th.value:g}x)",
                    (0.01, th.value), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="red")
    if picture.percent:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(picture.title, fontsize=10)
    ax.set_xlabel("minutes")
    ax.set_ylabel(picture.unit)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / picture.file
    fig.savefig(path, metadata={SPEC_KEY: picture.spec_hash(), "Software": "mixin.preview"})
    plt.close(fig)
    return path


def fetch(base: str, picture: Picture, start: float, end: float, step: float) -> Drawn:
    """Every line of the picture; a query without finite data is an error, so a picture is never empty."""
    data: Drawn = []
    for line in picture.lines:
        result = query_range(base, line.expr, start, end, step)
        series = []
        for item in result:
            points = [(float(ts), float(v)) for ts, v in item["values"] if math.isfinite(float(v))]
            if points:
                series.append((line_name(line, item["metric"]), [p[0] for p in points], [p[1] for p in points]))
        if not series:
            raise RuntimeError(f"{picture.file}: no data for {line.expr}")
        data += sorted(series)
    return data


def render_all(base: str, out: Path, minutes: float, cfg: MixinConfig = DEFAULT,
               end: float | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    return [draw(p, fetch(base, p, start, end, step), out) for p in pictures(cfg)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixin.preview", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--out", type=Path, default=IMAGES, help="directory for the PNG files")
    parser.add_argument("--minutes", type=float, default=10.0, help="time range drawn, ending now")
    args = parser.parse_args(argv)
    try:
        paths = render_all(args.prometheus.rstrip("/"), args.out, args.minutes)
    except (OSError, RuntimeError) as exc:
        print(f"mixin.preview: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
