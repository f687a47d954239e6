"""The official `openai` SDK lists the simulator's Agents API sessions and turns through its own pagination.

The SDK builds its models without validating them, so each object it received is validated again here with
`model_validate(..., strict=True)` (the literals included) and must carry every field the model declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.beta import AgentSession
from openai.types.beta.agents.sessions.turn import Turn
from pydantic import BaseModel

from exporter.simulator import FakeClock, Simulator

TURNS = 1000


@dataclass
class World:
    sim: Simulator
    client: openai.OpenAI
    session_id: str  # the session with TURNS turns
    turn_ids: list[str]  # its turns, oldest first


def _wire_keys(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


# Fields the API documents as left out when they hold their default ("Omitted when review is none").
OMITTED: dict[str, set[str]] = {"AgentSession": {"review"}}


def _strict(model: type[BaseModel], obj: BaseModel) -> dict[str, Any]:
    """The object as the SDK received it (only the keys that were sent), validated strictly."""
    raw = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    want = _wire_keys(model) - OMITTED.get(model.__name__, set())
    assert set(raw) == want, f"{model.__name__} keys differ: {set(raw) ^ want}"
    model.model_validate(raw, strict=True)
    return raw


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    clock = FakeClock(start=1_770_000_000.0)
    with Simulator(seed=5, clock=clock, sessions_scenario="sessions-churn", speed=4) as sim:
        sim.engine.set_workload(False)
        clock.advance(600)  # sessions came and went: some were deleted
        sim.sessions.set_workload(False)
        sid = sim.sessions.create_session(agent_id="agent_big", metadata={"team": "billing"})
        plans: list[list[tuple[str, float]]] = [
            [("queued", 1), ("in_progress", 2), ("completed", 0)],
            [("in_progress", 1), ("waiting", 2), ("in_progress", 1), ("failed", 0)],
            [("queued", 1), ("waiting", 1), ("cancelled", 0)],
        ]
        ids = []
        for i in range(TURNS - 3):  # several turns share each created_at second: ties keep creation order
            ids.append(sim.sessions.create_turn(sid, plans[i % 3], error_code="context_length_exceeded"))
            if i % 4 == 3:
                clock.advance(1)
        clock.advance(10)
        # The newest three are still going: queued, in_progress, waiting.
        ids.append(sim.sessions.create_turn(sid, [("in_progress", 100), ("completed", 0)]))
        ids.append(sim.sessions.create_turn(sid, [("in_progress", 1), ("waiting", 1000), ("cancelled", 0)]))
        ids.append(sim.sessions.create_turn(sid, [("queued", 100), ("completed", 0)]))
        clock.advance(2)
        with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as client:
            yield World(sim, client, sid, ids)


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_every_turn_of_a_1000_turn_session_through_auto_pagination(world: World, order: str) -> None:
    listed = list(world.client.beta.agents.sessions.turns.list(world.session_id, order=order, limit=100))
    want = world.turn_ids if order == "asc" else world.turn_ids[::-1]
    assert [t.id for t in listed] == want
    statuses = set()
    for turn in listed:
        raw = _strict(Turn, turn)
        statuses.add(raw["status"])
        assert raw["session_id"] == world.session_id and raw["agent_id"] == "agent_big"
        assert (raw["completed_at"] is not None) == (raw["status"] in ("completed", "failed", "cancelled"))
        assert (raw["error"] is not None) == (raw["status"] == "failed")
    assert statuses == {"queued", "in_progress", "waiting", "completed", "failed", "cancelled"}


def test_default_page_size_pages_too(world: World) -> None:
    """Without a limit the API pages by 20: 50 pages, followed by the SDK's cursor (the last item's id)."""
    listed = [t.id for t in world.client.beta.agents.sessions.turns.list(world.session_id)]
    assert listed == world.turn_ids[::-1]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_every_session_through_auto_pagination(world: World, order: str) -> None:
    listed = list(world.client.beta.agents.sessions.list(order=order, limit=7))
    want = world.sim.sessions.session_ids()
    assert len(want) > 20
    assert [s.id for s in listed] == (want if order == "asc" else want[::-1])
    seen = set()
    for session in listed:
        raw = _strict(AgentSession, session)
        seen.add(raw["status"])
    assert "idle" in seen and "requires_action" in seen


def test_sessions_come_and_go(world: World) -> None:
    deleted = world.sim.sessions.deleted
    assert deleted  # the churn scenario deleted some
    listed = {s.id for s in world.client.beta.agents.sessions.list(limit=100)}
    assert not listed & set(deleted)
    with pytest.raises(openai.NotFoundError):
        world.client.beta.agents.sessions.retrieve(deleted[0])
    with pytest.raises(openai.NotFoundError):
        list(world.client.beta.agents.sessions.turns.list(deleted[0]))


def test_filters_by_agent_and_metadata(world: World) -> None:
    mine = [s.id for s in world.client.beta.agents.sessions.list(agent_id="agent_big")]
    assert mine == [world.session_id]
    tagged = [s.id for s in world.client.beta.agents.sessions.list(metadata={"team": "billing"})]
    assert tagged == [world.session_id]
    assert list(world.client.beta.agents.sessions.list(metadata={"team": "other"})) == []


def test_the_beta_header_is_required(world: World) -> None:
    r = httpx.get(f"{world.sim.base_url}/agents/sessions", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_beta"
    ok = httpx.get(f"{world.sim.base_url}/agents/sessions",
                   headers={"Authorization": "Bearer sk-test", "OpenAI-Beta": "agents=v1"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
    too_many = httpx.get(f"{world.sim.base_url}/agents/sessions/{world.session_id}/turns", params={"limit": 101},
                         headers={"Authorization": "Bearer sk-test", "OpenAI-Beta": "agents=v1"})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "limit"


def test_a_single_turn_and_session_validate(world: World) -> None:
    turn = world.client.beta.agents.sessions.turns.retrieve(world.turn_ids[-2], session_id=world.session_id)
    assert _strict(Turn, turn)["status"] == "waiting"
    session = world.client.beta.agents.sessions.retrieve(world.session_id)
    raw = _strict(AgentSession, session)
    assert raw["status"] == "requires_action" and raw["required_actions"][0]["turn_id"] == world.turn_ids[-2]
