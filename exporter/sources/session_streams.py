"""Reading one Agents API session's live event stream: `GET {base}/agents/sessions/{id}/events` with
`Accept: text/event-stream` (what `client.beta.agents.sessions.events.stream()` reads).

`follow()` holds one connection and hands each event to a callback as it arrives: a turn event
(`agent.session.turn.created`, `.in_progress`, `.completed`, `.failed`, `.cancelled`) becomes a single-run
snapshot of the turn it carries, whole; a session status event (`agent.session.in_progress`,
`.requires_action`, `.idle`, `.failed`) is passed on by type (a turn waiting for input has no turn event:
streams.py lists the session then); anything else (text deltas, items) is ignored. It returns
when the stream ends, however: closed, cut, refused, or quiet longer than the keep-alive bound (a hang).

Untrusted input: an event (or a line) over MAX_EVENT_BYTES ends the stream (`too_large`), an event that is
not JSON, names another session or holds a bad turn is skipped and counted by reason, and a connection
carries at most MAX_EVENTS_PER_STREAM events before the exporter reconnects. Never raises (but for
cancellation).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx

from exporter.model import REASON_MALFORMED_PAGE, REASON_NOT_OBJECT, RunSnapshot, parse_turn, thread_id_problem
from exporter.sources.credentials import TokenUnavailable
from exporter.sources.transport import release

log = logging.getLogger(__name__)

STREAM_EVENTS = "session_events"  # api_requests_total{endpoint}: one per connection attempt
MAX_EVENT_BYTES = 256 * 1024  # a turn event is a few KB; a line or an event past this ends the stream
MAX_EVENTS_PER_STREAM = 100_000  # then the exporter reconnects (and lists the session in between)
TURN_EVENTS = frozenset({"agent.session.turn.created", "agent.session.turn.in_progress",
                         "agent.session.turn.completed", "agent.session.turn.failed",
                         "agent.session.turn.cancelled"})
SESSION_EVENTS = frozenset({"agent.session.in_progress", "agent.session.requires_action", "agent.session.idle",
                            "agent.session.failed"})

EndReason = Literal["closed", "hang", "refused", "gone", "error", "too_large", "too_many"]


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One thing a stream said: a turn's snapshot, a session change, or an invalid event's reason."""

    session: str
    snap: RunSnapshot | None = None
    event: str | None = None  # a session status event's type (agent.session.requires_action, ...)
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    session: str
    reason: EndReason
    connected: bool  # the stream was open (2xx, text/event-stream) before it ended
    reached: bool  # an HTTP answer came back that shows the API is up (2xx, 404, 429)
    events: int = 0


class SseDecoder:
    """Server-sent events, incrementally: (event name, data) per frame; comments and unknown fields skipped.
    A line or a frame past `limit` bytes raises ValueError."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        frames: list[tuple[str, bytes]] = []
        start = 0
        while (cut := _line_end(buffer, start)) is not None:
            end, after = cut
            frame = self._line(buffer[start:end])
            if frame is not None:
                frames.append(frame)
            start = after
        self._buffer = buffer[start:]  # one copy per chunk, not one per line
        if len(self._buffer) > self.limit:
            raise ValueError("line too long")
        return frames

    def _line(self, line: bytes) -> tuple[str, bytes] | None:
        if not line:
            frame = (self._event, b"\n".join(self._data)) if self._data else None
            self._event, self._data, self._size = "", [], 0
            return frame
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self.limit:
                raise ValueError("event too large")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")[:200]
        return None


def _line_end(buffer: bytes, start: int) -> tuple[int, int] | None:
    """(end of the first line from `start`, start of the next) for \\n, \\r\\n or \\r endings; None without a
    whole line."""
    newline = buffer.find(b"\n", start)
    ret = buffer.find(b"\r", start, len(buffer) if newline == -1 else newline)  # scans this line only
    if ret == -1:
        return None if newline == -1 else (newline, newline + 1)
    if ret + 1 == len(buffer):
        return None  # a \\n may follow in the next chunk
    return ret, ret + 2 if buffer[ret + 1] == 0x0A else ret + 1


def read_event(session: str, data: bytes) -> StreamItem | None:
    """One frame's data as an item; None for the events that say nothing about turns or the session."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return StreamItem(session, invalid=REASON_MALFORMED_PAGE)
    if not isinstance(event, dict):
        return StreamItem(session, invalid=REASON_NOT_OBJECT)
    kind = event.get("type")
    if kind in SESSION_EVENTS:
        return StreamItem(session, event=kind)
    if kind not in TURN_EVENTS:
        return None
    turn = event.get("turn")
    if isinstance(turn, dict) and turn.get("usage") is None and isinstance(event.get("usage"), dict):
        turn = {**turn, "usage": event["usage"]}  # usage on the event, when the turn left it out
    parsed = parse_turn(turn, session)
    if parsed.snapshot is not None and parsed.snapshot.scope != session:
        return StreamItem(session, invalid=REASON_MALFORMED_PAGE)  # a turn of another session: never applied
    return StreamItem(session, snap=parsed.snapshot, invalid=parsed.invalid_reason)


class StreamReader:
    """Opens and reads session streams through one API client's settings (auth, headers, rate limit),
    on a connection pool of its own."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], url: Callable[[str], httpx.URL],
                 report: Callable[[str, str], None], acquire: Callable[[], Awaitable[None]], keepalive: float,
                 connect_timeout: float = 10.0) -> None:
        self._make_client = client  # called on first use, inside the running loop
        self._client: httpx.AsyncClient | None = None
        self.url = url  # path -> URL
        self.report = report  # (endpoint, code): api_requests_total
        self.acquire = acquire  # a token of the source's rate limit (an awaitable), as every request takes
        self.keepalive = keepalive  # seconds of silence (no byte, not even a keep-alive comment) that are a hang
        self.connect_timeout = connect_timeout

    async def follow(self, session: str, on_item: Callable[[StreamItem], None],
                     on_open: Callable[[], None]) -> StreamEnd:
        if thread_id_problem(session) is not None:
            return StreamEnd(session, "error", connected=False, reached=False)
        await self.acquire()
        if self._client is None:
            self._client = self._make_client()
        request = self._client.build_request("GET", self.url(f"/agents/sessions/{quote(session, safe='')}/events"))
        try:
            async with asyncio.timeout(self.connect_timeout):
                response = await self._client.send(request, stream=True)
        except (httpx.TimeoutException, TimeoutError):
            self.report(STREAM_EVENTS, "timeout")
            return StreamEnd(session, "hang", connected=False, reached=False)
        except (httpx.HTTPError, httpx.InvalidURL, TokenUnavailable) as exc:
            if not isinstance(exc, TokenUnavailable):
                self.report(STREAM_EVENTS, "connection_error")
            return StreamEnd(session, "error", connected=False, reached=False)
        try:
            self.report(STREAM_EVENTS, str(response.status_code))
            status = response.status_code
            if status == 404:
                return StreamEnd(session, "gone", connected=False, reached=True)
            if not 200 <= status < 300 or not response.headers.get("content-type", "").startswith("text/event-stream"):
                return StreamEnd(session, "refused", connected=False, reached=status == 429 or 200 <= status < 300)
            on_open()
            return await self._read(session, response, on_item)
        finally:
            await response.aclose()
            release(response)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _read(self, session: str, response: httpx.Response, on_item: Callable[[StreamItem], None]) -> StreamEnd:
        decoder = SseDecoder()
        chunks = response.aiter_raw().__aiter__()
        events = 0
        while True:
            try:
                async with asyncio.timeout(self.keepalive):
                    chunk = await anext(chunks)
                frames = decoder.feed(chunk)
            except StopAsyncIteration:
                return StreamEnd(session, "closed", connected=True, reached=True, events=events)
            except (httpx.TimeoutException, TimeoutError):
                return StreamEnd(session, "hang", connected=True, reached=True, events=events)
            except httpx.HTTPError:
                return StreamEnd(session, "error", connected=True, reached=True, events=events)
            except ValueError:
                return StreamEnd(session, "too_large", connected=True, reached=True, events=events)
            for _, data in frames:
                events += 1
                item = read_event(session, data)
                if item is not None:
                    on_item(item)
            if events >= MAX_EVENTS_PER_STREAM:
                return StreamEnd(session, "too_many", connected=True, reached=True, events=events)
