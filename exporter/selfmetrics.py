"""The exporter's own metrics, recorded in one place: every source, receiver and the loop report what they did
through one `SelfMetrics`, which writes the persisted counters (into the tracker's aggregates) and the gauges
(`ExporterState`). As node_exporter's collectors all report their scrape outcome the same way, every API
source gets the same api_up, requests and rate-limit series.
"""

from __future__ import annotations

from exporter import metrics_spec as m
from exporter.aggregates import Aggregates
from exporter.metrics import ExporterState


class SelfMetrics:
    def __init__(self, aggregates: Aggregates, state: ExporterState | None = None) -> None:
        self.aggregates = aggregates
        self.state = state if state is not None else ExporterState()

    # -- from the sources and receivers -----------------------------------------------------

    def api_request(self, source: str, endpoint: str, code: str) -> None:
        """One HTTP request of an API source (its RequestHook, with the `source` label added)."""
        self.aggregates.inc(m.API_REQUESTS.name, (source, endpoint, code))

    def rate_limit_remaining(self, remaining: int) -> None:
        self.state.rate_limit_remaining = float(remaining)

    def push_request(self, code: int) -> None:
        self.aggregates.inc(m.PUSH_REQUESTS.name, (str(code),))

    def push_items(self, outcome: str, count: int = 1) -> None:
        self.aggregates.inc(m.PUSH_ITEMS.name, (outcome,), count)

    def webhook(self, event_type: str, outcome: str) -> None:
        self.aggregates.inc(m.WEBHOOKS.name, (event_type, outcome))

    # -- from the loop ------------------------------------------------------------------------

    def api_up(self, source: str, up: bool) -> bool:
        """api_up{source}, the one place it is set; True when the value changed."""
        value = 1.0 if up else 0.0
        changed = self.state.api_up.get(source) != value
        self.state.api_up[source] = value
        return changed

    def api_reached(self, now: float) -> None:
        """A poll or fetch got an answer that shows the API is up."""
        self.state.last_poll_success = now

    def invalid(self, reason: str, count: int = 1) -> None:
        self.aggregates.inc(m.INVALID_OBJECTS.name, (reason,), count)

    def poll_duration(self, seconds: float) -> None:
        self.aggregates.observe(m.POLL_DURATION.name, (), seconds)

    def discovered(self) -> None:
        self.aggregates.inc(m.DISCOVERED_THREADS.name, ())

    def store_error(self) -> None:
        self.aggregates.inc(m.STORE_ERRORS.name, ())
