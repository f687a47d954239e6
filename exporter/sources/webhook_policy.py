"""What a verified webhook event does, beside the receiver that verifies it (webhooks.py).

Hold and settle: a terminal event for a response the exporter can fetch (it polls responses) is held in the
delivery log while that fetch runs, so that the response is counted once, with its error code, reason and
tokens, and with the event's time as its end. If the fetch fails FETCH_ATTEMPTS_BEFORE_EVENT times, or the
response is gone, the held event settles and counts on its own. Without a responses source, or with a full
watch list, the event counts on its own at once. A repeated delivery (same webhook-id) counts nothing.

A session event (`agent.session.*`) counts no turn: it goes to the sessions source's policy
(sources/session_events.py), which makes that session due at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from exporter.inbox import Delivery
from exporter.model import RunSnapshot
from exporter.runstate import Remembered
from exporter.selfmetrics import SelfMetrics
from exporter.sources import FetchResult
from exporter.sources.webhooks import DeliveryLog
from exporter.statuses import is_terminal
from exporter.tracker import Tracker

# A webhook event waits for the fetch of its response this many failed attempts, then counts on its own.
FETCH_ATTEMPTS_BEFORE_EVENT = 3

Recall = Callable[[Iterable[str]], Mapping[str, Remembered]]


class WebhookPolicy:
    def __init__(self, deliveries: DeliveryLog, tracker: Tracker, metrics: SelfMetrics, recall: Recall,
                 fetch: Callable[[str], bool] | None,
                 on_session: Callable[[Delivery, float], None] | None = None) -> None:
        self.deliveries = deliveries
        self.tracker = tracker
        self.metrics = metrics
        self.recall = recall
        # Register a response for fetching by id: False when the watch list is full; None: not polled.
        self.fetch = fetch
        self.on_session = on_session  # None: the sessions source is off; session events are only counted

    def deliver(self, delivery: Delivery, now: float) -> None:
        """A verified webhook event: drop a repeated delivery; wait for the fetch of the response when the
        exporter polls responses (for its error code, reason and tokens); else count from the event."""
        if delivery.delivery_id in self.deliveries:
            delivery.outcome = "duplicate"
        else:
            self.deliveries.add(delivery.delivery_id, now)
            snap = delivery.run
            if delivery.session is not None and self.on_session is not None:
                self.on_session(delivery, now)
            recalled = self.recall([snap.id]) if snap is not None else {}
            known = self.tracker.known([snap.id], recalled).get(snap.id) if snap is not None else None
            if snap is None:
                delivery.outcome = "accepted"
            elif known is not None and is_terminal(known):
                delivery.outcome = self.tracker.observe_run(snap, now, recalled)
            elif self.fetch is not None and self.fetch(snap.id):
                self.deliveries.hold(snap)
                delivery.outcome = "accepted"
            else:  # no key, or the watch list is full: the event alone
                delivery.outcome = self.tracker.observe_run(snap, now, recalled)
        self.metrics.webhook(delivery.event_type, delivery.outcome)

    def with_event_end(self, snap: RunSnapshot) -> RunSnapshot:
        """A fetched terminal response settles its held webhook event, whose created_at is its end time
        (a Response has an end time only when completed)."""
        if not snap.terminal:
            return snap
        held = self.deliveries.settle(snap.id)
        if held is None or snap.ended_at() is not None or held.status != snap.status:
            return snap
        return replace(snap, failed_at=held.failed_at, cancelled_at=held.cancelled_at,
                       completed_at=held.completed_at)

    def give_up(self, result: FetchResult, failures: int) -> RunSnapshot | None:
        """The held event of a response that is gone or failed `failures` fetches in a row (this one
        included) at the limit: settled, to be counted from the event alone. None otherwise."""
        if result.run_id in self.deliveries.pending and (
                result.outcome == "gone" or failures >= FETCH_ATTEMPTS_BEFORE_EVENT):
            return self.deliveries.settle(result.run_id)
        return None
