"""Interpreter settings for a long-running process whose state is many long-lived objects, and whose event
loop shares the GIL with the thread that renders /metrics.

A full (generation 2) collection walks every object the collector tracks: with 10,000 series and the runs
behind them it held the event loop for 40-200 ms, beyond a scrape's latency budget. So once the state is
loaded, it is frozen (gc.freeze: moved where the collector never walks it; it is freed by reference counting
as usual), and the youngest generation is collected less often, so that fewer objects survive into the
old generations and full collections stay rare and small. Cyclic garbage is still collected.

Rendering a 10,000-series page takes tens of milliseconds in a worker thread; with CPython's 5 ms switch
interval the loop waited up to that long for the GIL at each switch, which tripled /metrics p99 (110 ms
against 37 ms with 1 ms, measured by bench/bench_serve.py).
"""

from __future__ import annotations

import gc
import sys

GEN0_THRESHOLD = 20_000  # allocations between two young collections (CPython's default: 700)
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits (CPython's default: 0.005)


def tune_after_load() -> None:
    gc.collect()  # what loading left behind, before freezing the rest
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    sys.setswitchinterval(SWITCH_INTERVAL)
