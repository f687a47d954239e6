"""Reading a session's live event stream: the bounded SSE decoder, what each event becomes, and `follow()`
against the simulator and against hostile servers (hangs, 404s, refusals, oversized and foreign events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import REASON_MALFORMED_PAGE, REASON_MISSING_ID, REASON_NOT_OBJECT
from exporter.simulator import FakeClock, Simulator
from exporter.sources.api import ApiSettings
from exporter.sources.session_streams import (
    MAX_EVENT_BYTES,
    STREAM_EVENTS,
    SseDecoder,
    StreamEnd,
    StreamItem,
    StreamReader,
    read_event,
)
from exporter.sources.sessions import SessionsSource

SID = "sess_1"


def _turn(**fields: Any) -> dict[str, Any]:
    return {"id": "turn_1", "object": "agent.session.turn", "agent_id": "agent_a", "session_id": SID,
            "status": "in_progress", "created_at": 1_700_000_000, "started_at": 1_700_000_001, "completed_at": None,
            "error": None, "usage": None, **fields}


def _data(event_type: str, **fields: Any) -> bytes:
    return json.dumps({"event_id": "evt_1", "type": event_type, **fields}).encode()


# ------------------------------------------------------------------------------------------ SSE


def test_frames_are_decoded_whatever_the_chunking_and_line_endings() -> None:
    stream = (b": keep-alive\r\n\r\nevent: a\r\ndata: {\"x\":\r\ndata: 1}\r\n\r\n"
              b"event: b\rdata: 2\r\rdata:3\n\nid: 7\nretry: 10\n\n")
    whole = SseDecoder().feed(stream)
    assert whole == [("a", b'{"x":\n1}'), ("b", b"2"), ("", b"3")]
    decoder = SseDecoder()
    bytewise = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i:i + 1])]
    assert bytewise == whole


def test_a_line_or_an_event_past_the_limit_raises() -> None:
    with pytest.raises(ValueError):
        SseDecoder(limit=100).feed(b"data: " + b"x" * 200)  # no line end in sight
    decoder = SseDecoder(limit=100)
    with pytest.raises(ValueError):
        for _ in range(5):
            decoder.feed(b"data: " + b"x" * 30 + b"\n")  # short lines, one long event


# ------------------------------------------------------------------------------------------ events


def test_a_turn_event_is_a_snapshot_of_its_session() -> None:
    item = read_event(SID, _data("agent.session.turn.in_progress", session_id=SID, turn=_turn()))
    assert item is not None and item.snap is not None and item.invalid is None
    assert (item.snap.id, item.snap.scope, item.snap.status, item.snap.started_at) == ("turn_1", SID, "in_progress",
                                                                                       1_700_000_001)


def test_usage_on_the_event_counts_when_the_turn_leaves_it_out() -> None:
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
    turn = _turn(status="completed", completed_at=1_700_000_009)
    item = read_event(SID, _data("agent.session.turn.completed", turn=turn, usage=usage))
    assert item is not None and item.snap is not None
    assert (item.snap.prompt_tokens, item.snap.completion_tokens, item.snap.completed_at) == (9, 4, 1_700_000_009)


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", REASON_MALFORMED_PAGE),
    (b"[1, 2]", REASON_NOT_OBJECT),
    (_data("agent.session.turn.created", turn=_turn(id=None)), REASON_MISSING_ID),
    (_data("agent.session.turn.created", turn=_turn(session_id="sess_other")), REASON_MALFORMED_PAGE),
    (_data("agent.session.turn.created", turn="turn_1"), REASON_NOT_OBJECT),
])
def test_bad_events_are_counted_and_never_applied(data: bytes, reason: str) -> None:
    item = read_event(SID, data)
    assert item is not None and item.snap is None and item.invalid == reason


def test_session_events_pass_on_their_type_and_the_rest_is_ignored() -> None:
    item = read_event(SID, _data("agent.session.requires_action", session={}))
    assert item == StreamItem(SID, event="agent.session.requires_action")
    assert read_event(SID, _data("agent.session.turn.output_text.delta", delta="hi")) is None
    assert read_event(SID, _data("agent.session.created")) is None


# ------------------------------------------------------------------------------------------ follow()


def _reader(handler: Callable[[httpx.Request], httpx.Response], keepalive: float = 5.0,
            requests: list[tuple[str, str]] | None = None) -> StreamReader:
    async def acquire() -> None:
        return None

    def report(endpoint: str, code: str) -> None:
        if requests is not None:
            requests.append((endpoint, code))

    return StreamReader(lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                        lambda path: httpx.URL("http://127.0.0.1" + path), report, acquire, keepalive)


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], then_hang: bool = False) -> None:
        self.chunks = chunks
        self.then_hang = then_hang

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.then_hang:
            await asyncio.sleep(3600)


def _sse(chunks: list[bytes], then_hang: bool = False, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/agents/sessions/{SID}/events"
        return httpx.Response(status, headers={"content-type": "text/event-stream"},
                              stream=Chunks(chunks, then_hang))
    return handler


def _follow(reader: StreamReader, session: str = SID) -> tuple[StreamEnd, list[StreamItem], int]:
    items: list[StreamItem] = []
    opened: list[int] = []

    async def go() -> StreamEnd:
        try:
            return await reader.follow(session, items.append, lambda: opened.append(1))
        finally:
            await reader.aclose()
    return asyncio.run(go()), items, len(opened)


def test_a_quiet_stream_is_a_hang() -> None:
    frame = b"event: x\ndata: " + _data("agent.session.turn.created", turn=_turn()) + b"\n\n"
    requests: list[tuple[str, str]] = []
    end, items, opened = _follow(_reader(_sse([frame, b": keep-alive\n\n"], then_hang=True), 0.2, requests))
    assert (end.reason, end.connected, end.events, opened) == ("hang", True, 1, 1)
    assert len(items) == 1 and items[0].snap is not None
    assert requests == [(STREAM_EVENTS, "200")]


def test_an_oversized_event_ends_the_stream() -> None:
    end, items, _ = _follow(_reader(_sse([b"data: " + b"x" * (MAX_EVENT_BYTES + 10)])))
    assert end.reason == "too_large" and not items


@pytest.mark.parametrize(("status", "reason", "reached"), [(404, "gone", True), (401, "refused", False),
                                                           (429, "refused", True), (500, "refused", False)])
def test_refusals(status: int, reason: str, reached: bool) -> None:
    requests: list[tuple[str, str]] = []
    end, items, opened = _follow(_reader(_sse([], status=status), requests=requests))
    assert (end.reason, end.reached, end.connected, opened) == (reason, reached, False, 0)
    assert requests == [(STREAM_EVENTS, str(status))] and not items


def test_not_an_event_stream_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list"})
    end, _, opened = _follow(_reader(handler))
    assert end.reason == "refused" and opened == 0


def test_a_connection_error_is_counted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    requests: list[tuple[str, str]] = []
    end, _, _ = _follow(_reader(handler, requests=requests))
    assert (end.reason, end.reached) == ("error", False) and requests == [(STREAM_EVENTS, "connection_error")]


def test_an_unusable_session_id_is_never_requested() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request")
    end, _, _ = _follow(_reader(handler), session="a/b")
    assert end.reason == "error"


def test_follow_reads_the_simulators_stream_with_the_sources_settings() -> None:
    clock = FakeClock()
    with Simulator(seed=2, clock=clock, api_key="sk-sim") as sim:
        sid = sim.sessions.create_session()
        requests: list[tuple[str, str]] = []
        source = SessionsSource(ApiSettings(base_url=sim.base_url, api_key="sk-sim"),
                                on_request=lambda e, c: requests.append((e, c)))
        source.stream_limit = 2
        reader = source.stream_reader()
        items: list[StreamItem] = []

        async def go() -> StreamEnd:
            task = asyncio.create_task(reader.follow(sid, items.append, lambda: None))
            while not sim.sessions._sessions[sid].listeners:
                await asyncio.sleep(0.01)
            sim.sessions.create_turn(sid, [("queued", 1), ("in_progress", 1), ("failed", 0)],
                                     error_code="rate_limit_exceeded")
            clock.advance(3)
            sim.sessions.now()
            while not any(i.snap is not None and i.snap.terminal for i in items):
                await asyncio.sleep(0.01)
            sim.sessions.delete_session(sid)  # the stream ends with its session
            end = await asyncio.wait_for(task, 10)
            await reader.aclose()
            return end

        end = asyncio.run(go())
    assert end.reason == "closed" and end.connected
    snaps = [i.snap for i in items if i.snap is not None]
    assert [s.status for s in snaps] == ["queued", "in_progress", "failed"]
    assert snaps[-1].error_code == "rate_limit_exceeded" and snaps[-1].failed_at is not None
    assert requests == [(STREAM_EVENTS, "200")]


# ------------------------------------------------------------------------------------------ the manager


class ScriptedReader:
    """follow() opens at once, hands over what the test pushes, and ends when the test says how."""

    def __init__(self) -> None:
        self.sinks: dict[str, Callable[[StreamItem], None]] = {}
        self.ends: dict[str, asyncio.Future[StreamEnd]] = {}
        self.opened: list[str] = []

    async def follow(self, session: str, on_item: Callable[[StreamItem], None],
                     on_open: Callable[[], None]) -> StreamEnd:
        self.sinks[session] = on_item
        self.ends[session] = asyncio.get_running_loop().create_future()
        self.opened.append(session)
        on_open()
        return await self.ends[session]

    async def aclose(self) -> None:
        return None


def test_the_most_recently_active_sessions_are_streamed_and_not_polled_while_up() -> None:
    from exporter.aggregates import Aggregates
    from exporter.model import RunSnapshot
    from exporter.scheduler import Schedule, Scheduler
    from exporter.selfmetrics import SelfMetrics
    from exporter.streams import StreamManager
    from exporter.tracker import Tracker

    class Mono:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    mono, t0 = Mono(), 1_700_000_000
    tracker = Tracker([], 3600)
    scheduler = Scheduler(Schedule(1.0, 60.0), mono)
    scheduler.sync({f"sess_{i}": "sessions" for i in range(3)})
    for i in range(3):  # sess_2 is the most recently active, sess_0 the least
        tracker.watch(f"sess_{i}")
        snap = RunSnapshot(f"turn_{i}", f"sess_{i}", "in_progress", t0 + i, source="sessions", started_at=t0 + i)
        tracker.observe_run(snap, t0 + 10)
        scheduler.slots[f"sess_{i}"].due = mono.now + 50
    metrics = SelfMetrics(Aggregates())
    reader = ScriptedReader()

    async def go() -> None:
        manager = StreamManager(reader, 2, "sessions", tracker=tracker, scheduler=scheduler,  # type: ignore[arg-type]
                                metrics=metrics, recall=lambda ids: {}, wake=lambda: None, mono=mono)
        manager.sync()
        await asyncio.sleep(0)
        assert sorted(reader.opened) == ["sess_1", "sess_2"]
        manager.apply(t0 + 11)
        assert scheduler.streamed == {"sess_1", "sess_2"}
        # Opened: each is owed one listing (what happened before the stream), then no more polls.
        assert sorted(scheduler.due(tracker.is_active)) == ["sess_1", "sess_2"]
        for i in (1, 2):
            scheduler.slots[f"sess_{i}"].due = mono.now - 1  # past due, yet streamed: not polled
        assert scheduler.due(tracker.is_active) == []
        # A turn event ends sess_2's turn: a single-run update, exact.
        done = RunSnapshot("turn_2", "sess_2", "completed", t0 + 2, source="sessions", started_at=t0 + 2,
                           completed_at=t0 + 8)
        reader.sinks["sess_2"](StreamItem("sess_2", snap=done))
        manager.apply(t0 + 12)
        assert tracker.runs["turn_2"].status == "completed" and not tracker.is_active("sess_2")
        # sess_2 is idle now: its stream closes and sess_0 gets one.
        mono.now += 1
        manager.sync()
        await asyncio.sleep(0)
        assert "sess_2" not in manager.held and "sess_2" not in scheduler.streamed and "sess_0" in manager.held
        # sess_1's stream is cut: listed at once (it is due), reopened only after a backoff.
        reader.ends["sess_1"].set_result(StreamEnd("sess_1", "error", connected=True, reached=True))
        await asyncio.sleep(0)
        manager.apply(t0 + 13)
        assert "sess_1" not in scheduler.streamed and "sess_1" in scheduler.due(tracker.is_active)
        failures, not_before = manager.retry["sess_1"]
        assert failures == 1 and 0.5 <= not_before - mono.now <= 1.0  # 0.5 s doubled, with jitter
        mono.now += 0.6  # past the re-rank interval: sess_1 is still backing off or reopened, never doubled
        manager.sync()
        await asyncio.sleep(0)
        assert reader.opened.count("sess_1") == (1 if not_before > mono.now else 2)
        await manager.aclose()

    asyncio.run(go())


def _world() -> tuple[Any, Any, Any, Any]:
    from exporter.aggregates import Aggregates
    from exporter.scheduler import Schedule, Scheduler
    from exporter.selfmetrics import SelfMetrics
    from exporter.tracker import Tracker

    class Mono:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    mono = Mono()
    return mono, Tracker([], 3600), Scheduler(Schedule(1.0, 60.0), mono), SelfMetrics(Aggregates())


def test_webhooks_of_streamed_sessions_need_no_listing_and_a_waking_one_is_streamed_first() -> None:
    from exporter.streams import StreamManager

    mono, tracker, scheduler, metrics = _world()
    scheduler.sync({"sess_a": "sessions", "sess_b": "sessions"})
    reader = ScriptedReader()

    async def go() -> None:
        manager = StreamManager(reader, 1, "sessions", tracker=tracker, scheduler=scheduler,  # type: ignore[arg-type]
                                metrics=metrics, recall=lambda ids: {}, wake=lambda: None, mono=mono)
        assert manager.on_webhook("sess_a", "agent.session.in_progress")  # woke up: its stream, at once
        manager.sync()
        await asyncio.sleep(0)
        manager.apply(1.0)
        assert reader.opened == ["sess_a"] and "sess_a" in scheduler.streamed
        assert manager.on_webhook("sess_a", "agent.session.idle")  # streamed: the stream says it
        assert not manager.on_webhook("sess_b", "agent.session.idle")  # not streamed: list it
        assert not manager.on_webhook("sess_b", "agent.session.failed")
        # sess_a went idle (no unfinished turn, the boost is over): the stream closes and covers it.
        mono.now += 11
        scheduler.slots["sess_a"].owed = False
        manager.sync()
        assert "sess_a" not in manager.held and "sess_a" not in scheduler.streamed
        assert scheduler.slots["sess_a"].due == mono.now + 60  # its next poll an idle interval on
        assert manager.on_webhook("sess_a", "agent.session.idle")  # the stream saw the end
        await manager.aclose()

    asyncio.run(go())


def test_a_turn_from_a_stream_a_duplicate_and_a_listing_is_counted_once() -> None:
    from exporter.model import RunSnapshot
    from exporter.streams import StreamManager

    mono, tracker, scheduler, metrics = _world()
    scheduler.sync({"sess_a": "sessions"})
    tracker.watch("sess_a", born=1_700_000_000)
    reader = ScriptedReader()
    done = RunSnapshot("turn_1", "sess_a", "completed", 1_700_000_001, source="sessions", started_at=1_700_000_002,
                       completed_at=1_700_000_005, prompt_tokens=5, completion_tokens=3)

    async def go() -> None:
        manager = StreamManager(reader, 1, "sessions", tracker=tracker, scheduler=scheduler,  # type: ignore[arg-type]
                                metrics=metrics, recall=lambda ids: {}, wake=lambda: None, mono=mono)
        manager.on_webhook("sess_a", "agent.session.in_progress")
        manager.sync()
        await asyncio.sleep(0)
        for _ in range(2):  # a duplicated event
            reader.sinks["sess_a"](StreamItem("sess_a", snap=done))
        manager.apply(1_700_000_006)
        tracker.observe_listing("sess_a", [done], 1_700_000_007, complete=True, ok=True)  # the owed listing
        await manager.aclose()

    asyncio.run(go())
    counters = tracker.aggregates.counters
    assert counters[("assistants_runs_finished_total", ("completed", "sessions"))] == 1
    assert counters[("assistants_run_tokens_total", ("prompt", "sessions"))] == 5


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20),
       events=st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)), max_size=5))
def test_any_bytes_decode_or_stop_cleanly_and_any_event_reads_without_raising(
        chunks: list[bytes], events: list[bytes]) -> None:
    decoder = SseDecoder(limit=256)
    try:
        frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    except ValueError:
        frames = []  # past the limit: the stream ends
    for _, data in frames:
        assert len(data) <= 256
    for data in [*events, *(d for _, d in frames)]:
        item = read_event(SID, data)
        assert item is None or item.session == SID
        assert item is None or item.snap is None or item.snap.scope == SID


def test_a_woken_session_that_gets_no_stream_is_listed() -> None:
    from exporter.streams import StreamManager

    mono, tracker, scheduler, metrics = _world()
    scheduler.sync({"sess_a": "sessions", "sess_b": "sessions"})
    for slot in scheduler.slots.values():
        slot.due = mono.now + 50
    reader = ScriptedReader()

    async def go() -> None:
        manager = StreamManager(reader, 1, "sessions", tracker=tracker, scheduler=scheduler,  # type: ignore[arg-type]
                                metrics=metrics, recall=lambda ids: {}, wake=lambda: None, mono=mono)
        assert manager.on_webhook("sess_a", "agent.session.in_progress")
        mono.now += 0.1
        assert manager.on_webhook("sess_b", "agent.session.action_required")
        manager.sync()  # one stream allowed: the latest woken (sess_b) gets it, sess_a is listed instead
        await asyncio.sleep(0)
        assert reader.opened == ["sess_b"]
        assert scheduler.due(tracker.is_active) == ["sess_a"]
        await manager.aclose()

    asyncio.run(go())
