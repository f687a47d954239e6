"""Garbage-collector settings for a long-running process whose state is many long-lived objects.

A full (generation 2) collection walks every object the collector tracks: with 10,000 series and the runs
behind them it held the event loop for 40-120 ms, beyond a scrape's latency budget. So once the state is
loaded, it is frozen (gc.freeze: moved where the collector never walks it; it is freed by reference counting
as usual), and the youngest generation is collected less often, so that fewer objects survive into the
old generations and full collections stay rare and small. Cyclic garbage is still collected.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000  # allocations between two young collections (CPython's default: 700)


def tune_after_load() -> None:
    gc.collect()  # what loading left behind, before freezing the rest
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
