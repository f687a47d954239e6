"""The simulator's webhook sender: signs each terminal `response.*` event and each `agent.session.*` event
(Standard Webhooks, as OpenAI does), POSTs it to a URL, retries on non-2xx, and can misbehave on purpose
(duplicates, reordering, late deliveries, tampered copies) so that receivers can be tested against what the
real sender may do.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from exporter.sources.webhooks import parse_secret, sign

_log = logging.getLogger(__name__)


class Event(Protocol):
    @property
    def id(self) -> str: ...

    def envelope(self) -> dict[str, Any]: ...


class Announcer(Protocol):
    """An engine whose events are sent (ResponseEngine, SessionsEngine)."""

    def take_events(self) -> Sequence[Event]: ...


class Announcers:
    """Several engines' events through one sender."""

    def __init__(self, *engines: Announcer) -> None:
        self.engines = engines

    def take_events(self) -> list[Event]:
        return [event for engine in self.engines for event in engine.take_events()]


@dataclass(frozen=True, slots=True)
class WebhookFaults:
    """Fractions of events (0..1) that misbehave, and by how much."""

    duplicate: float = 0.0  # delivered twice (same webhook-id)
    reorder: bool = False  # each batch of events that ended together is sent in a random order
    late: float = 0.0  # held back by `late_seconds`, so later events overtake them
    late_seconds: float = 2.0
    bad_signature: float = 0.0  # a tampered copy (body changed after signing) is sent first
    seed: int = 0


@dataclass(slots=True)
class _Delivery:
    event: Event
    body: bytes
    tampered: bool = False
    attempt: int = 0


class WebhookSender:
    """A thread that delivers the engine's terminal events to `url`. Wall-clock timestamps: the receiver
    checks them against its own clock (±300 s)."""

    def __init__(self, engine: Announcer, url: str, secret: str, faults: WebhookFaults | None = None,
                 interval: float = 0.05, max_attempts: int = 30, timeout: float = 5.0) -> None:
        self.engine = engine
        self.url = url
        self._key = parse_secret(secret)
        self.faults = faults if faults is not None else WebhookFaults()
        self.interval = interval
        self.max_attempts = max_attempts
        self._rng = random.Random(self.faults.seed)
        self._queue: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=timeout)
        self._lock = threading.Lock()
        self.sent: list[tuple[str, int]] = []  # (webhook-id, HTTP status or 0 for a transport error)
        self.given_up = 0
        self.tampered_refused = 0  # tampered copies the receiver answered 4xx

    def start(self) -> WebhookSender:
        self._thread = threading.Thread(target=self._run, name="simulator-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._client.close()

    def idle(self) -> bool:
        """Nothing queued: every event so far was delivered (or given up on)."""
        with self._lock:
            return not self._queue

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.enqueue(self.engine.take_events())
            self.deliver_due()

    def enqueue(self, events: Sequence[Event]) -> None:
        faults, rng, now = self.faults, self._rng, time.monotonic()
        events = list(events)
        if faults.reorder:
            rng.shuffle(events)
        with self._lock:
            for event in events:
                body = json.dumps(event.envelope()).encode()
                due = now + (faults.late_seconds if rng.random() < faults.late else 0.0)
                if rng.random() < faults.bad_signature:
                    tampered = body.replace(b'"type": "', b'"type":  "', 1)
                    self._push(due, _Delivery(event, tampered, tampered=True))
                self._push(due, _Delivery(event, body))
                if rng.random() < faults.duplicate:
                    self._push(due + 0.01, _Delivery(event, body))

    def _push(self, due: float, delivery: _Delivery) -> None:
        heapq.heappush(self._queue, (due, next(self._seq), delivery))

    def deliver_due(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._queue[0][0] > time.monotonic():
                    return
                _, _, delivery = heapq.heappop(self._queue)
            status = self._post(delivery)
            if delivery.tampered and 400 <= status < 500:
                self.tampered_refused += 1
            if 200 <= status < 300 or (delivery.tampered and status):
                continue  # a tampered copy that got an answer (a refusal, by design) is not retried
            delivery.attempt += 1
            if delivery.attempt >= self.max_attempts:
                self.given_up += 1
                continue
            with self._lock:
                self._push(time.monotonic() + min(5.0, 0.1 * 2 ** delivery.attempt), delivery)

    def _post(self, delivery: _Delivery) -> int:
        msg_id = delivery.event.id
        stamp = int(time.time())
        # The signature is of the untampered body: a tampered copy carries a signature that does not match.
        original = json.dumps(delivery.event.envelope()).encode()
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": "v1," + sign(self._key, msg_id, stamp, original)}
        try:
            status = self._client.post(self.url, content=delivery.body, headers=headers).status_code
        except httpx.HTTPError as exc:
            _log.debug("webhook delivery failed: %s", type(exc).__name__)
            status = 0
        self.sent.append((msg_id, status))
        return status
