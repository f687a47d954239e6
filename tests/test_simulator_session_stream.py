"""The simulator's live session stream (`GET /v1/agents/sessions/{id}/events`, SSE), read by the official SDK's
`events.stream()`: turn events with the whole turn (usage at the end), session events, and the fault knobs
(a cut mid-event, a stall, duplicates) as seen on the wire."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.beta import (
    AgentSessionIdleEvent,
    AgentSessionInProgressEvent,
    AgentSessionRequiresActionEvent,
    AgentSessionTurnCompletedEvent,
    AgentSessionTurnCreatedEvent,
    AgentSessionTurnInProgressEvent,
)

from exporter.simulator import FakeClock, Simulator
from tests.helpers import wait_until

HEADERS = {"Authorization": "Bearer sk-test", "OpenAI-Beta": "agents=v1", "Accept": "text/event-stream"}


@pytest.fixture
def world() -> Iterator[tuple[Simulator, FakeClock]]:
    clock = FakeClock()
    sim = Simulator(seed=5, clock=clock).start()
    sim.stream_faults.keepalive = 0.2
    yield sim, clock
    sim.stop()


def _read_in_background(sim: Simulator, session_id: str) -> tuple[list[Any], threading.Thread]:
    client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)
    events: list[Any] = []

    def read() -> None:
        try:
            for event in client.beta.agents.sessions.events.stream(session_id):
                events.append(event)
        except (httpx.HTTPError, openai.APIError):
            pass  # the simulator stopped

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return events, thread


def _subscribed(sim: Simulator, session_id: str) -> bool:
    with sim.sessions._lock:
        return sim.sessions._sessions[session_id].listeners > 0


def test_the_sdk_reads_turn_events_with_the_whole_turn(world: tuple[Simulator, FakeClock]) -> None:
    sim, clock = world
    sid = sim.sessions.create_session(agent_id="agent_x")
    events, thread = _read_in_background(sim, sid)
    wait_until(lambda: _subscribed(sim, sid), 5, 0.02, "the stream to open")
    turn_id = sim.sessions.create_turn(sid, [("queued", 1), ("in_progress", 2), ("waiting", 1), ("in_progress", 1),
                                             ("completed", 0)], input_tokens=70, output_tokens=30)
    for _ in range(5):
        clock.advance(1.0)
        sim.sessions.now()
    wait_until(lambda: any(isinstance(e, AgentSessionIdleEvent) for e in events), 5, 0.02, "the session idle")
    assert [type(e) for e in events] == [
        AgentSessionTurnCreatedEvent, AgentSessionInProgressEvent, AgentSessionTurnInProgressEvent,
        AgentSessionRequiresActionEvent, AgentSessionTurnInProgressEvent, AgentSessionInProgressEvent,
        AgentSessionTurnCompletedEvent, AgentSessionIdleEvent]
    by_type = {e.type: e for e in events}
    created = by_type["agent.session.turn.created"]
    assert created.turn.id == turn_id and created.turn.status == "queued" and created.session_id == sid
    done = by_type["agent.session.turn.completed"]
    assert done.turn.status == "completed" and done.turn.started_at is not None and done.turn.completed_at
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (70, 30)
    assert done.turn.usage is not None and done.turn.usage.total_tokens == 100
    assert by_type["agent.session.requires_action"].session.required_actions[0].turn_id == turn_id
    # Turn events strictly validated against the SDK's own models.
    for event in events:
        type(event).model_validate(event.to_dict(), strict=False)
    sim.stop()
    thread.join(5)


def test_an_unknown_session_is_a_404_and_the_beta_header_is_required(world: tuple[Simulator, FakeClock]) -> None:
    sim, _ = world
    r = httpx.get(sim.base_url + "/agents/sessions/sess_nope/events", headers=HEADERS, timeout=5)
    assert r.status_code == 404
    sid = sim.sessions.create_session()
    r = httpx.get(sim.base_url + f"/agents/sessions/{sid}/events",
                  headers={**HEADERS, "OpenAI-Beta": "assistants=v2"}, timeout=5)
    assert r.status_code == 400


def _raw(sim: Simulator, sid: str, until: bytes, limit: int = 20_000) -> bytes:
    """The stream's bytes until `until` shows up, the server closes, or `limit` bytes."""
    data = b""
    with httpx.stream("GET", sim.base_url + f"/agents/sessions/{sid}/events", headers=HEADERS, timeout=5) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            data += chunk
            if until in data or len(data) > limit:
                break
    return data


def _turn_soon(sim: Simulator, clock: FakeClock, sid: str) -> None:
    def go() -> None:
        wait_until(lambda: _subscribed(sim, sid), 5, 0.02, "the stream to open")
        sim.sessions.create_turn(sid, [("in_progress", 1), ("completed", 0)])
        clock.advance(1.0)
        sim.sessions.now()
    threading.Thread(target=go, daemon=True).start()


def test_keep_alives_and_duplicates(world: tuple[Simulator, FakeClock]) -> None:
    sim, clock = world
    sim.stream_faults.duplicate = 1.0
    sid = sim.sessions.create_session()
    _turn_soon(sim, clock, sid)
    data = _raw(sim, sid, b"event: agent.session.idle\ndata")
    frames = [f for f in data.split(b"\n\n") if f.startswith(b"event: agent.session.turn")]
    assert len(frames) == 4 and frames[0] == frames[1] and frames[2] == frames[3]


def test_a_stream_cut_mid_event_ends_inside_a_frame(world: tuple[Simulator, FakeClock]) -> None:
    sim, clock = world
    sim.stream_faults.cut = 1.0
    sid = sim.sessions.create_session()
    _turn_soon(sim, clock, sid)
    data = _raw(sim, sid, b"\x00never")
    assert data.count(b"event: ") == 1 and not data.endswith(b"\n\n") and b"}" not in data


def test_a_stalled_stream_sends_nothing_not_even_keep_alives(world: tuple[Simulator, FakeClock]) -> None:
    sim, clock = world
    sim.stream_faults.stall, sim.stream_faults.stall_seconds = 1.0, 1.0
    sid = sim.sessions.create_session()
    _turn_soon(sim, clock, sid)
    data = _raw(sim, sid, b"\x00never")
    # keep-alives before the first event; then silence until the server gives up the connection
    assert b"event: " not in data and data.replace(b": keep-alive\n\n", b"") == b""
