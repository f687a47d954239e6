"""When the loop tells the collector that the metrics changed: changes at most every MIN_PUBLISH_GAP, ages
and windowed ratios (which move with time alone) at least every PUBLISH_INTERVAL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client.metrics_core import Metric

from exporter.metrics import SnapshotCollector

PUBLISH_INTERVAL = 1.0
# Building the families costs milliseconds; under a stream of pushes a tick comes every few milliseconds, so
# changes are published at most this often (a poll's result still reaches /metrics well within a second).
MIN_PUBLISH_GAP = 0.2


class Publisher:
    def __init__(self, collector: SnapshotCollector, prepare: Callable[[], Callable[[], list[Metric]]],
                 mono: Callable[[], float]) -> None:
        self.collector = collector
        self.prepare = prepare  # copies the state (on the loop) and returns how to build the families from it
        self.mono = mono
        self.published_at = float("-inf")
        self.unpublished = False  # something changed since the last publish
        self._pending = False

    def publish(self) -> None:
        """Say the metrics changed. What they show is copied from the state (under a millisecond) only when a
        scrape asks, and the families (~10,000 series) are then built from the copy off this loop."""
        self.collector.update_prepared(self.prepare)
        self.published_at = self.mono()
        self.unpublished = False

    def wait_limit(self) -> float | None:
        """Seconds the loop may sleep before a change is due to be published; None: nothing waits."""
        return max(0.0, self.published_at + MIN_PUBLISH_GAP - self.mono()) if self.unpublished else None

    def after_tick(self, changed: bool, answered: bool) -> None:
        """`changed`: the tick applied something; `answered`: it answered receivers, whose answers go first."""
        self.unpublished = self.unpublished or changed
        since = self.mono() - self.published_at
        if (self.unpublished and since >= MIN_PUBLISH_GAP) or since >= PUBLISH_INTERVAL:
            if answered:
                self._publish_soon()
            else:
                self.publish()

    def _publish_soon(self) -> None:
        """Publish after the answered requests have run: building the families takes milliseconds, and a
        receiver's answer (a webhook sender waits for it) should not wait for them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.publish()
            return
        if not self._pending:
            self._pending = True
            loop.call_soon(self._deferred_publish)

    def _deferred_publish(self) -> None:
        self._pending = False
        self.publish()
