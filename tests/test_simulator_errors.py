"""Errors in the API's shape, request validation, rate-limit headers and every fault knob."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import httpx
import pytest

from exporter.model import INVALID_REASONS, parse_run
from exporter.simulator import FakeClock, Faults, Simulator
from tests.conftest import SimFactory
from tests.simulator_support import API_HEADERS, client

RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
RESET_FORMAT = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s|\d+h\d+m\d+s)$")


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, object] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def _assert_common_headers(resp: httpx.Response) -> None:
    for name in RATE_HEADERS:
        assert name in resp.headers, name
    assert RESET_FORMAT.match(resp.headers["x-ratelimit-reset-requests"])
    assert resp.headers["x-request-id"].startswith("req_")


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(seed=0, clock=FakeClock(), api_key="sk-secret-123")


def test_auth(sim: Simulator) -> None:
    tid = sim.thread_ids()[0]
    beta = {"OpenAI-Beta": "assistants=v2"}
    with httpx.Client(base_url=sim.base_url, timeout=10) as http:
        missing = http.get(f"/threads/{tid}/runs", headers=beta)
        assert missing.status_code == 401
        assert _error(missing)["type"] == "invalid_request_error"
        wrong = http.get(f"/threads/{tid}/runs", headers={**beta, "Authorization": "Bearer sk-wrong-999"})
        assert wrong.status_code == 401
        assert _error(wrong)["code"] == "invalid_api_key"
        assert "sk-wrong-999" not in wrong.text and "sk-secret-123" not in wrong.text
        _assert_common_headers(wrong)
        ok = http.get(f"/threads/{tid}/runs", headers={**beta, "Authorization": "Bearer sk-secret-123"})
        assert ok.status_code == 200
        azure = http.get(
            f"/threads/{tid}/runs",
            params={"api-version": "2024-05-01-preview"},
            headers={**beta, "api-key": "sk-secret-123"},
        )
        assert azure.status_code == 200
        azure_bad = http.get(f"/threads/{tid}/runs", headers={**beta, "api-key": "nope"})
        assert azure_bad.status_code == 401
    with Simulator(seed=0, clock=FakeClock()) as open_sim, httpx.Client(base_url=open_sim.base_url) as http:
        tid = open_sim.thread_ids()[0]
        assert http.get(f"/threads/{tid}/runs", headers={**beta, "Authorization": "Bearer any"}).status_code == 200
        assert http.get(f"/threads/{tid}/runs", headers={**beta, "Authorization": "Basic abc"}).status_code == 401


def test_beta_header_and_not_found(sim: Simulator) -> None:
    tid = sim.thread_ids()[0]
    auth = {"Authorization": "Bearer sk-secret-123"}
    with httpx.Client(base_url=sim.base_url, headers=auth, timeout=10) as http:
        no_beta = http.get(f"/threads/{tid}/runs")
        assert no_beta.status_code == 400
        assert "OpenAI-Beta" in str(_error(no_beta)["message"])
        beta = {"OpenAI-Beta": "assistants=v2"}
        gone = http.get("/threads/thread_nope/runs", headers=beta)
        assert gone.status_code == 404
        assert _error(gone)["message"] == "No thread found with id 'thread_nope'."
        _assert_common_headers(gone)
        no_run = http.get(f"/threads/{tid}/runs/run_nope", headers=beta)
        assert no_run.status_code == 404 and "run_nope" in str(_error(no_run)["message"])
        assert http.get("/threads/x/nothing", headers=beta).status_code == 404
        assert http.get(sim.base_url.removesuffix("/v1") + "/other", headers=beta).status_code == 404


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "run_unknown"}, "after"),
        ({"before": "run_unknown"}, "before"),
    ],
)
def test_list_parameter_validation(sim: Simulator, params: dict[str, object], param: str) -> None:
    with client(sim, headers={"Authorization": "Bearer sk-secret-123"}) as http:
        resp = http.get(f"/threads/{sim.thread_ids()[0]}/runs", params=params)
        assert resp.status_code == 400
        assert _error(resp)["param"] == param


def test_pagination_cursors(sim: Simulator) -> None:
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    tid = sim.engine.create_thread()
    for i in range(45):
        sim.engine.create_run(tid, [("in_progress", 1), ("completed", 0)])
        if i % 2:
            clock.advance(1)
    desc = [
        r["id"]
        for r in sorted(
            (r for r in sim.engine.runs() if r["thread_id"] == tid),
            key=lambda r: (r["created_at"], r["id"]),
            reverse=True,
        )
    ]
    with client(sim, headers={"Authorization": "Bearer sk-secret-123"}) as http:
        first = http.get(f"/threads/{tid}/runs").json()  # default limit 20, order desc
        assert [r["id"] for r in first["data"]] == desc[:20]
        assert (first["first_id"], first["last_id"], first["has_more"]) == (desc[0], desc[19], True)
        second = http.get(f"/threads/{tid}/runs", params={"after": first["last_id"]}).json()
        assert [r["id"] for r in second["data"]] == desc[20:40]
        third = http.get(f"/threads/{tid}/runs", params={"after": second["last_id"]}).json()
        assert [r["id"] for r in third["data"]] == desc[40:] and third["has_more"] is False
        back = http.get(f"/threads/{tid}/runs", params={"before": second["first_id"], "limit": 5}).json()
        assert [r["id"] for r in back["data"]] == desc[15:20] and back["has_more"] is True
        asc = http.get(f"/threads/{tid}/runs", params={"order": "asc", "limit": 3, "after": desc[-1]}).json()
        assert [r["id"] for r in asc["data"]] == desc[::-1][1:4]
        between = http.get(f"/threads/{tid}/runs", params={"after": desc[0], "before": desc[4]}).json()
        assert [r["id"] for r in between["data"]] == desc[1:4] and between["has_more"] is False


def test_bad_write_requests(sim: Simulator) -> None:
    tid = sim.thread_ids()[0]
    with client(sim, headers={"Authorization": "Bearer sk-secret-123"}) as http:
        no_assistant = http.post(f"/threads/{tid}/runs", json={})
        assert no_assistant.status_code == 400 and _error(no_assistant)["param"] == "assistant_id"
        not_json = http.post(f"/threads/{tid}/runs", content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400
        rid = sim.engine.create_run(tid, [("in_progress", 1), ("completed", 0)])
        sim.clock.advance(2)  # type: ignore[attr-defined]
        assert http.post(f"/threads/{tid}/runs/{rid}/cancel").status_code == 400
        assert http.post(f"/threads/{tid}/runs/{rid}/submit_tool_outputs", json={"tool_outputs": []}).status_code == 400


def test_token_bucket_rate_limit() -> None:
    clock = FakeClock()
    faults = Faults(rate_limit_rps=0.5, rate_limit_burst=3)
    with Simulator(seed=0, clock=clock, faults=faults) as sim, client(sim) as http:
        url = f"/threads/{sim.thread_ids()[0]}/runs"
        answers = [http.get(url) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
        limited = answers[-1]
        err = _error(limited)
        assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
        assert limited.headers["retry-after"] == "2"
        assert limited.headers["retry-after-ms"] == "2000"
        assert limited.headers["x-ratelimit-reset-requests"] == "6s"
        _assert_common_headers(limited)
        clock.advance(2)
        assert http.get(url).status_code == 200
        sim.faults.rate_limit_rps = None  # live change: unlimited from the next request
        assert all(http.get(url).status_code == 200 for _ in range(10))


def test_forced_and_random_errors() -> None:
    with Simulator(seed=0, clock=FakeClock(), faults=Faults(seed=1)) as sim, client(sim) as http:
        url = f"/threads/{sim.thread_ids()[0]}/runs"
        sim.faults.force_status = [500, 503, 429]
        codes = [http.get(url).status_code for _ in range(4)]
        assert codes == [500, 503, 429, 200]
        sim.faults.error_rate = 1.0
        random_codes = Counter(http.get(url).status_code for _ in range(30))
        assert set(random_codes) == {500, 503}
        sim.faults.error_rate = 0.0
        assert http.get(url).status_code == 200


def test_malformed_items() -> None:
    clock = FakeClock()
    with Simulator(seed=0, clock=clock, speed=10) as sim, client(sim) as http:
        clock.advance(60)
        tid = sim.thread_ids()[0]
        clean = http.get(f"/threads/{tid}/runs", params={"limit": 100}).json()
        assert len(clean["data"]) >= 30
        sim.faults.malformed_rate = 1.0
        page = http.get(f"/threads/{tid}/runs", params={"limit": 100}).json()
        assert (page["first_id"], page["last_id"]) == (clean["first_id"], clean["last_id"])
        reasons = Counter(parse_run(item, tid).invalid_reason for item in page["data"])
        assert None not in reasons  # every item is broken in a way the exporter counts
        assert set(reasons) <= set(INVALID_REASONS)
        assert {"not_object", "missing_status", "unknown_status", "wrong_type"} <= set(reasons)
        assert any(isinstance(i, dict) and i.get("status") == "paused" for i in page["data"])
        sim.faults.malformed_rate = 0.0
        assert http.get(f"/threads/{tid}/runs", params={"limit": 100}).json() == clean


def test_truncated_bodies_and_latency() -> None:
    with Simulator(seed=0, clock=FakeClock(), faults=Faults(truncate_rate=1.0)) as sim, client(sim) as http:
        resp = http.get(f"/threads/{sim.thread_ids()[0]}/runs")
        assert resp.status_code == 200
        assert int(resp.headers["content-length"]) == len(resp.content)
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.content)
        sim.faults.truncate_rate = 0.0
        sim.faults.latency = 0.2
        started = time.monotonic()
        assert http.get(f"/threads/{sim.thread_ids()[0]}/runs").status_code == 200
        assert time.monotonic() - started >= 0.2


def test_request_ids_unique_and_headers_on_every_response(sim: Simulator) -> None:
    with httpx.Client(base_url=sim.base_url, headers={**API_HEADERS, "Authorization": "Bearer sk-secret-123"}) as http:
        responses = [
            http.get(f"/threads/{sim.thread_ids()[0]}/runs"),
            http.get("/threads/none/runs"),
            http.post("/threads"),
            http.get(f"/threads/{sim.thread_ids()[0]}/runs", params={"limit": -1}),
        ]
    for resp in responses:
        _assert_common_headers(resp)
    assert len({r.headers["x-request-id"] for r in responses}) == len(responses)


@pytest.mark.parametrize(("error", "printed"), [(ConnectionResetError, False), (BrokenPipeError, False),
                                                (ValueError, True)])
def test_a_client_going_away_is_not_a_traceback(error: type[Exception], printed: bool,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with Simulator(seed=0, clock=FakeClock()) as sim:
        server = sim._server
        assert server is not None
        try:
            raise error("boom")
        except error:
            server.handle_error(None, ("127.0.0.1", 1))  # what socketserver calls from inside its except
    assert ("Traceback" in capsys.readouterr().err) == printed
