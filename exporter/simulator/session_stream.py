"""A session's live event stream: `GET /v1/agents/sessions/{id}/events` with `Accept: text/event-stream`, as
`client.beta.agents.sessions.events.stream()` reads it.

Live only, as the real one: a stream carries what happens after it opened (no replay, no resume cursor).
Each event is one SSE frame, `event: <type>` and `data: <json>`; a comment (`: keep-alive`) goes out when
nothing happened for `keepalive` seconds, and the server ends a stream after `max_seconds`. Fault knobs
(`StreamFaults`, changeable live): a stream cut in the middle of an event, a stream that stalls (no events,
no keep-alives, the connection held open), duplicated events.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from exporter.simulator.sessions import BETA, SessionsEngine
from exporter.simulator.wire import JSON, ApiError

EVENTS_PATH = re.compile(r"^/v1/agents/sessions/(?P<session_id>[^/]+)/events$")
POLL = 0.02  # seconds between looks at the session's new events


@dataclass
class StreamFaults:
    cut: float = 0.0  # per event: the connection closes halfway through its frame
    stall: float = 0.0  # per event: instead of it, silence (no keep-alives either) for `stall_seconds`, then close
    duplicate: float = 0.0  # per event: sent twice
    stall_seconds: float = 60.0
    keepalive: float = 2.0  # seconds of quiet before a keep-alive comment
    max_seconds: float = 600.0  # a stream is closed by the server after this long
    seed: int = 0
    cuts_made: int = 0  # what the knobs did so far (for tests)
    stalls_made: int = 0


def frame(event: JSON) -> bytes:
    """One SSE frame."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def open_stream(engine: SessionsEngine, path: str, headers: object, faults: StreamFaults,
                stopping: threading.Event) -> Iterator[bytes] | None:
    """The frames of a stream for this request, or None when the path is not a session's event stream.
    Raises ApiError as the other routes do (a missing beta header, an unknown session)."""
    match = EVENTS_PATH.match(path)
    if match is None:
        return None
    get = getattr(headers, "get", None)
    beta = (get("OpenAI-Beta") if callable(get) else None) or ""
    if BETA not in str(beta).replace(" ", ""):
        raise ApiError(400, f"You must provide the 'OpenAI-Beta' header: 'OpenAI-Beta: {BETA}'.", code="invalid_beta")
    session_id = match["session_id"]
    after = engine.subscribe(session_id)
    rng = random.Random(f"{faults.seed}:{session_id}:{after}")
    return _frames(engine, session_id, after, faults, rng, stopping)


def _frames(engine: SessionsEngine, session_id: str, after: int, faults: StreamFaults, rng: random.Random,
            stopping: threading.Event) -> Iterator[bytes]:
    started = last = time.monotonic()
    try:
        while not stopping.is_set() and time.monotonic() - started < faults.max_seconds:
            events, alive = engine.stream_events(session_id, after)
            if not alive:
                return  # the session was deleted: the stream ends
            for seq, event in events:
                after = seq
                data = frame(event)
                draw = rng.random()
                if draw < faults.cut:
                    faults.cuts_made += 1
                    yield data[: len(data) // 2]
                    return
                if draw < faults.cut + faults.stall:
                    faults.stalls_made += 1
                    stopping.wait(faults.stall_seconds)
                    return
                yield data
                if rng.random() < faults.duplicate:
                    yield data
                last = time.monotonic()
            if time.monotonic() - last >= faults.keepalive:
                yield b": keep-alive\n\n"
                last = time.monotonic()
            stopping.wait(POLL)
    finally:
        engine.unsubscribe(session_id)
