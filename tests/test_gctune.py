"""The interpreter settings the exporter applies once its state is loaded."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from exporter.gctune import GEN0_THRESHOLD, SWITCH_INTERVAL, tune_after_load


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restore_gc")
def test_the_loaded_state_is_frozen_out_of_full_collections_and_young_ones_are_rarer() -> None:
    state = [{"run": i} for i in range(10_000)]  # long-lived objects, as a loaded tracker holds
    gen1, gen2 = gc.get_threshold()[1:]
    tune_after_load()
    assert gc.get_freeze_count() >= len(state)
    assert not any(gc.is_tracked(obj) and obj in gc.get_objects(generation=2) for obj in state[:3])
    assert gc.get_threshold() == (GEN0_THRESHOLD, gen1, gen2)
    assert sys.getswitchinterval() == SWITCH_INTERVAL  # the loop waits less for the GIL while a page renders
    garbage: list[object] = []
    garbage.append(garbage)  # a cycle made after the freeze is still collected
    del garbage
    assert gc.collect() >= 1
