"""Everything the simulator sends validates against the OpenAPI spec's schemas (through real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from exporter.simulator import SCENARIOS, FakeClock, Simulator
from tests.simulator_support import client, errors_for, translate_nullable, validator


def _validate_page(page: dict[str, Any], seen: set[str], schema: str = "ListRunsResponse") -> None:
    """The envelope every time; each distinct item once (validation is ~1 ms per run object)."""
    fresh = []
    for item in page["data"]:
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            fresh.append(item)
    errors = errors_for(schema, {**page, "data": fresh})
    assert not errors, errors[:5]


def _walk_thread(
    http: httpx.Client, thread_id: str, seen: set[str], statuses: set[str], limit: int, follow: bool
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        resp = http.get(f"/threads/{thread_id}/runs", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        _validate_page(page, seen)
        runs.extend(page["data"])
        statuses.update(r["status"] for r in page["data"])
        if not page["has_more"] or not follow:
            return runs
        params["after"] = page["last_id"]


# discovery sends Foundry's content_filter incomplete reason, which OpenAI's spec does not have
# (tests/test_simulator_foundry.py covers that scenario).
@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"discovery"}))
def test_every_run_and_page_validates_over_time(scenario: str) -> None:
    clock = FakeClock()
    seen: set[str] = set()
    statuses: set[str] = set()
    # speed 20: expiry after 30 s, the failure spike from 15 s; 3 s steps over 63 s cover every phase.
    with Simulator(scenario=scenario, seed=3, clock=clock, speed=20) as sim, client(sim) as http:
        for step in range(22):
            runs: list[dict[str, Any]] = []
            # history's 4500 old runs never change: walk them fully at the start and the end only.
            full = scenario != "history" or step in (0, 21)
            for tid in sim.thread_ids():
                runs += _walk_thread(http, tid, seen, statuses, limit=100 if full else 30, follow=full)
            # A default-sized page (limit 20) and a few single-run and steps endpoints each step.
            first = http.get(f"/threads/{sim.thread_ids()[0]}/runs")
            assert first.status_code == 200
            _validate_page(first.json(), seen)
            for run in runs[-3:]:
                got = http.get(f"/threads/{run['thread_id']}/runs/{run['id']}")
                assert got.status_code == 200
                assert not errors_for("RunObject", got.json())
                steps = http.get(f"/threads/{run['thread_id']}/runs/{run['id']}/steps")
                assert steps.status_code == 200
                assert not errors_for("ListRunStepsResponse", steps.json())
            clock.advance(3)
    assert {"queued", "in_progress", "completed"} <= statuses
    expected = {
        "steady": {"requires_action", "failed", "incomplete", "cancelled", "expired"},
        "failure-spike": {"failed", "expired"},
        "expiry": {"requires_action", "expired"},
        "backlog": {"failed"},
        "history": {"failed", "incomplete", "cancelled", "expired"},
    }[scenario]
    assert expected <= statuses


def test_write_endpoints_validate() -> None:
    clock = FakeClock()
    with Simulator(seed=4, clock=clock) as sim, client(sim) as http:
        sim.engine.set_workload(False)
        thread = http.post("/threads", json={"metadata": {"team": "qa"}})
        assert thread.status_code == 200
        assert not errors_for("ThreadObject", thread.json())
        tid = thread.json()["id"]
        empty = http.get(f"/threads/{tid}/runs").json()
        assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        assert not errors_for("ListRunsResponse", empty)

        created = http.post(f"/threads/{tid}/runs", json={"assistant_id": "asst_x", "model": "gpt-4o"})
        assert created.status_code == 200
        assert not errors_for("RunObject", created.json())
        cancelled = http.post(f"/threads/{tid}/runs/{created.json()['id']}/cancel")
        assert cancelled.json()["status"] == "cancelling"
        assert not errors_for("RunObject", cancelled.json())

        rid = sim.engine.create_run(
            tid, [("in_progress", 1), ("requires_action", 100), ("in_progress", 1), ("completed", 0)]
        )
        clock.advance(2)
        run = http.get(f"/threads/{tid}/runs/{rid}").json()
        assert run["status"] == "requires_action"
        assert not errors_for("RunObject", run)
        calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
        outputs = [{"tool_call_id": c["id"], "output": "ok"} for c in calls]
        submitted = http.post(f"/threads/{tid}/runs/{rid}/submit_tool_outputs", json={"tool_outputs": outputs})
        assert submitted.status_code == 200
        assert not errors_for("RunObject", submitted.json())
        clock.advance(5)
        steps = http.get(f"/threads/{tid}/runs/{rid}/steps").json()
        assert len(steps["data"]) == 1
        assert not errors_for("ListRunStepsResponse", steps)
        assert not errors_for("RunStepObject", steps["data"][0])


def test_error_bodies_validate() -> None:
    with Simulator(seed=0, clock=FakeClock()) as sim, client(sim) as http:
        sim.faults.force_status = [429, 500]
        bodies = [
            http.get("/threads/thread_nope/runs", headers={"Authorization": ""}),  # forced 429 first
            http.get("/threads/thread_nope/runs"),  # forced 500
            http.get("/threads/thread_nope/runs", headers={"Authorization": ""}),  # 401
            http.get("/threads/thread_nope/runs"),  # 404
            http.get(f"/threads/{sim.thread_ids()[0]}/runs", params={"limit": 0}),  # 400
            http.get("/threads/thread_nope/runs", headers={"OpenAI-Beta": ""}),  # 400
        ]
        assert [b.status_code for b in bodies] == [429, 500, 401, 404, 400, 400]
        for body in bodies:
            assert not errors_for("ErrorResponse", body.json()), body.text


def test_validator_bites() -> None:
    with Simulator(seed=0, clock=FakeClock(), speed=20) as sim:
        sim.engine.clock.advance(40)  # type: ignore[attr-defined]
        runs = sim.engine.runs()
    good = next(r for r in runs if r["status"] == "completed")
    assert not errors_for("RunObject", good)
    broken: list[dict[str, Any]] = [
        {**good, "status": "paused"},
        {**good, "created_at": "yesterday"},
        {**good, "started_at": 1.5},
        {**good, "last_error": {"code": "oops", "message": "x"}},
        {**good, "usage": {"prompt_tokens": 1}},
        {**good, "object": "thread"},
        {k: v for k, v in good.items() if k != "expires_at"},
        {**good, "required_action": {"type": "submit_tool_outputs"}},
    ]
    for bad in broken:
        assert errors_for("RunObject", bad), bad
    page = {"object": "list", "data": [good], "first_id": good["id"], "last_id": good["id"], "has_more": "no"}
    assert errors_for("ListRunsResponse", page)
    assert errors_for("ListRunsResponse", {**page, "has_more": False, "data": ["garbage"]})
    assert errors_for("ErrorResponse", {"error": {"message": "x", "type": "y"}})


def test_nullable_translation() -> None:
    original: dict[str, Any] = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "nullable": True},
            "b": {"type": "string", "enum": ["x"], "nullable": True},
            "c": {"allOf": [{"type": "object"}, {"nullable": True}]},
            "d": {"$ref": "#/x", "nullable": True},
            "e": {"type": "integer"},
        },
    }
    schema = translate_nullable(original)
    props = schema["properties"]
    assert props["a"]["type"] == ["integer", "null"]
    assert props["b"]["enum"] == ["x", None]
    assert props["c"] == {"anyOf": [{"allOf": [{"type": "object"}]}, {"type": "null"}]}
    assert props["d"] == {"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}
    assert props["e"] == {"type": "integer"}
    # Untranslated, a JSON Schema validator ignores `nullable` and rejects the nulls the API sends.
    nulls = {"a": None, "b": None, "c": None}
    assert not Draft202012Validator({**original, "properties": {k: original["properties"][k] for k in nulls}}).is_valid(
        nulls
    )
    assert Draft202012Validator({**schema, "properties": {k: props[k] for k in nulls}}).is_valid(nulls)
    assert not Draft202012Validator(schema).is_valid({"e": None})
    assert validator("RunObject").is_valid(
        {**_a_run(), "started_at": None, "usage": None, "truncation_strategy": None, "response_format": None}
    )


def _a_run() -> dict[str, Any]:
    with Simulator(seed=0, clock=FakeClock()) as sim:
        sim.engine.set_workload(False)
        tid = sim.engine.create_thread()
        sim.engine.create_run(tid, [("queued", 5), ("completed", 0)])
        return sim.engine.runs()[-1]
