"""Cost of rendering the /metrics page of ~10,000 series, on one core, in-process.

    python bench/bench_render.py [--assistants 50] [--repeat 30]

Families come from the real build_families over a tracker of assistants x 200 runs (bench_scrape's fleet,
`--labels assistant_id`). Prints the median time of each way of rendering beside the goal (a full render of
10,000 series in <= 10 ms), with the machine's load average:

- prometheus_client: its generate_latest, what the exporter used before exposition.py;
- cold: a fresh Renderer (no kept text: every prefix escaped, every value formatted);
- a tenth moving: the next build after a tenth of the assistants saw runs end (the steady state);
- every value new: every Sample a new object with a new value and its series' labels dict (as the metrics
  layer hands them over): every value formatted again, the text before it kept;
- unchanged: the same families rendered again;
- gzip level 1 and 6 of the page.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scrape import _tracker  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402
from prometheus_client.samples import Sample  # noqa: E402

from exporter import metrics_spec as m  # noqa: E402
from exporter.exposition import Families, Renderer  # noqa: E402
from exporter.gctune import tune_after_load  # noqa: E402
from exporter.metrics import ExporterState, build_families  # noqa: E402

GOAL_MS = 10.0


def _median_ms(fn: Callable[[object], object], repeat: int, setup: Callable[[], object] = lambda: None) -> float:
    """Median wall time of fn(setup()), setup not timed."""
    times = []
    for _ in range(repeat):
        arg = setup()
        started = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assistants", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    tracker = _tracker(args.assistants * 200, args.assistants)
    tune_after_load()  # as the exporter does once its state is loaded
    state = ExporterState(api_up={"threads": 1.0}, rate_limit_remaining=100)
    tick = [0]

    def build(move: bool) -> list:  # type: ignore[type-arg]
        tick[0] += 1
        if move:
            for a in range(tick[0] % 10, args.assistants, 10):
                tracker.aggregates.observe(
                    m.RUN_DURATION.name, ("completed", "threads", f"asst_{a}"), 3.0 + tick[0] % 7
                )
        return build_families(tracker, state, 1_700_000_020 + tick[0], ("threads",), ("threads",))

    families = build(False)
    encoder = choose_encoder("")[0]
    page = generate_latest(Families(families))  # type: ignore[arg-type]
    series = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
    renderer = Renderer()
    assert renderer.render(families, encoder) == page

    def fresh() -> list:  # type: ignore[type-arg]
        """Every sample a new object with a new value, label sets as the metrics layer keeps them."""
        fams = build(False)
        for fam in fams:
            fam.samples = [Sample(s.name, s.labels, s.value + tick[0], None, None) for s in fam.samples]
        return fams

    def render(fams: object) -> None:
        renderer.render(fams, encoder)  # type: ignore[arg-type]

    build_ms = _median_ms(lambda _: build(True), args.repeat)
    rows = [
        ("prometheus_client generate_latest", _median_ms(lambda _: generate_latest(Families(families)), args.repeat)),  # type: ignore[arg-type]
        ("cold (nothing kept)", _median_ms(lambda _: Renderer().render(families, encoder), args.repeat)),
        ("a tenth moving", _median_ms(render, args.repeat, lambda: build(True))),
        ("every value new", _median_ms(render, args.repeat, fresh)),
        ("unchanged", _median_ms(lambda _: renderer.render(families, encoder), args.repeat)),
        ("gzip level 1", _median_ms(lambda _: gzip.compress(page, compresslevel=1), args.repeat)),
        ("gzip level 6", _median_ms(lambda _: gzip.compress(page, compresslevel=6), args.repeat)),
    ]
    print(
        f"{series} series, {len(page) / 1e6:.2f} MB page, one core, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"build_families (a tenth moving): {build_ms:.1f} ms")
    for what, ms in rows:
        goal = f"goal <= {GOAL_MS:g} ms" if what.startswith(("cold", "every", "a tenth")) else ""
        print(f"  {what:<36} {ms:7.1f} ms  {goal}")


if __name__ == "__main__":
    main()
