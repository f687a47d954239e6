"""The simulator's foundry flavor: project paths, api-version, Foundry's envelope, thread listing, tokens."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from exporter.simulator import FakeClock, Simulator
from exporter.simulator.cli import main as simulate_main
from exporter.statuses import TERMINAL
from tests.conftest import SimFactory
from tests.helpers import REPO_ROOT
from tests.test_simulator_cli import LAUNCH, _first_line

START = 1_760_000_000.0
IDENTITY_HEADER = "identity-secret"
RESOURCE = "https://ai.azure.com"


def get_token(sim: Simulator, resource: str = RESOURCE) -> str:
    resp = httpx.get(
        sim.identity_endpoint,
        params={"resource": resource, "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def api(sim: Simulator, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or get_token(sim)}"}
    return httpx.Client(base_url=sim.base_url, headers=headers, params={"api-version": "v1"}, timeout=10.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def sim(make_sim: SimFactory, clock: FakeClock) -> Simulator:
    return make_sim(
        workload=True,
        scenario="discovery",
        seed=3,
        clock=clock,
        speed=10,
        flavor="foundry",
        identity_header=IDENTITY_HEADER,
    )


def list_threads(http: httpx.Client, order: str, limit: int) -> list[dict[str, Any]]:
    """Every thread, following `last_id` until it is null, as the official pager does."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"order": order, "limit": limit}
    for _ in range(1000):
        resp = http.get("/threads", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert set(page) == {"data", "last_id", "has_more"}
        items.extend(page["data"])
        if page["last_id"] is None:
            assert page["has_more"] is False
            return items
        assert page["has_more"] is True
        assert page["last_id"] == page["data"][-1]["id"]
        params["after"] = page["last_id"]
    raise AssertionError("the listing never ended")


def test_base_url_is_the_project_endpoint(sim: Simulator) -> None:
    assert sim.base_url == f"http://127.0.0.1:{sim.port}/api/projects/sim-project"
    assert sim.identity_endpoint == f"http://127.0.0.1:{sim.port}/msi/token"


@pytest.mark.parametrize("version", ["v1", "2025-05-01", "2025-05-15-preview"])
def test_supported_api_versions_answer(sim: Simulator, version: str) -> None:
    with api(sim) as http:
        resp = http.get("/threads", params={"api-version": version})
    assert resp.status_code == 200


@pytest.mark.parametrize("params", [{}, {"api-version": "2024-05-01-preview"}, {"api-version": ""}])
def test_missing_or_unknown_api_version_is_400(sim: Simulator, params: dict[str, str]) -> None:
    token = get_token(sim)
    resp = httpx.get(f"{sim.base_url}/threads", params=params, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "api-version"


def test_openai_paths_and_other_projects_are_404(sim: Simulator) -> None:
    with api(sim) as http:
        tid = sim.thread_ids()[0]
        assert http.get(f"http://127.0.0.1:{sim.port}/v1/threads/{tid}/runs").status_code == 404
        assert http.get(f"http://127.0.0.1:{sim.port}/api/projects/other/threads").status_code == 404
        assert http.get(f"/threads/{tid}/runs").status_code == 200  # no OpenAI-Beta header needed


def test_runs_use_foundrys_envelope_and_null_last_id_on_the_last_page(sim: Simulator, clock: FakeClock) -> None:
    tid = sim.thread_ids()[0]
    for _ in range(5):
        sim.engine.create_run(tid, [("queued", 1), ("completed", 0)])
    with api(sim) as http:
        first = http.get(f"/threads/{tid}/runs", params={"limit": 3, "order": "asc"}).json()
        assert set(first) == {"data", "last_id", "has_more"}
        assert first["has_more"] is True and first["last_id"] == first["data"][-1]["id"]
        rest = http.get(f"/threads/{tid}/runs", params={"limit": 100, "order": "asc", "after": first["last_id"]})
        page = rest.json()
        assert page["has_more"] is False and page["last_id"] is None
        ids = [r["id"] for r in first["data"] + page["data"]]
    assert ids == [r["id"] for r in sim.engine.runs() if r["thread_id"] == tid]


def test_thread_listing_follows_after_exactly_in_both_orders(sim: Simulator, clock: FakeClock) -> None:
    for _ in range(7):
        clock.advance(1)
        sim.engine.create_thread()
    with api(sim) as http:
        for limit in (1, 2, 100):
            asc = list_threads(http, "asc", limit)
            desc = list_threads(http, "desc", limit)
            keys = [(t["created_at"], t["id"]) for t in asc]
            assert keys == sorted(keys)
            assert [t["id"] for t in desc] == [t["id"] for t in reversed(asc)]
            assert len({t["id"] for t in asc}) == len(asc) >= 10
        bad = http.get("/threads", params={"after": "thread_nope"})
    assert bad.status_code == 400


def test_deleted_threads_leave_the_listing(sim: Simulator) -> None:
    gone = sim.thread_ids()[0]
    sim.engine.delete_thread(gone)
    with api(sim) as http:
        assert gone not in {t["id"] for t in list_threads(http, "desc", 100)}


def test_the_discovery_scenario_opens_threads_while_running_and_the_truth_covers_them(
    sim: Simulator, clock: FakeClock
) -> None:
    before = set(sim.thread_ids())
    for _ in range(60):
        clock.advance(5)
        sim.engine.now()
    after = sim.thread_ids()
    new = [tid for tid in after if tid not in before]
    assert len(new) >= 3
    with api(sim) as http:
        listed = {t["id"]: t["created_at"] for t in list_threads(http, "desc", 100)}
        assert set(after) <= set(listed)
        assert all(listed[tid] >= START for tid in new)  # created while running, on the clock
        finished = 0
        for tid in listed:
            page = http.get(f"/threads/{tid}/runs", params={"limit": 100}).json()
            assert page["last_id"] is None  # under 100 runs a thread here
            finished += sum(1 for r in page["data"] if r["status"] in TERMINAL)
    truth = sim.engine.truth()
    assert finished == sum(truth.finished.values()) > 0
    assert sum(truth.by_status.values()) == len(sim.engine.runs())


def test_new_threads_are_deterministic_given_the_seed() -> None:
    def threads(seed: int) -> list[str]:
        clock = FakeClock(start=START)
        with Simulator(scenario="discovery", seed=seed, clock=clock, speed=10, flavor="foundry") as s:
            clock.advance(200)
            return s.thread_ids()  # catches up by itself: no other engine call first

    assert threads(1) == threads(1)
    assert len(threads(1)) > 3
    assert threads(1) != threads(2)


# ----- tokens ----------------------------------------------------------------------------------------


def test_identity_endpoint_answers_like_app_service(sim: Simulator) -> None:
    resp = httpx.get(
        sim.identity_endpoint,
        params={"resource": RESOURCE, "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": IDENTITY_HEADER},
    )
    body = resp.json()
    assert resp.status_code == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type"}
    assert body["token_type"] == "Bearer" and body["resource"] == RESOURCE
    # On the wall clock by default (azure-identity compares with time.time()); 3600 s lifetime.
    assert abs(int(body["expires_on"]) - (sim.tokens.clock.now() + 3600)) <= 2


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"resource": RESOURCE, "api-version": "2019-08-01"}, {}, 401),
        ({"resource": RESOURCE, "api-version": "2019-08-01"}, {"X-IDENTITY-HEADER": "wrong"}, 401),
        ({"resource": RESOURCE, "api-version": "2017-09-01"}, {"X-IDENTITY-HEADER": IDENTITY_HEADER}, 400),
        ({"api-version": "2019-08-01"}, {"X-IDENTITY-HEADER": IDENTITY_HEADER}, 400),
    ],
)
def test_identity_endpoint_refuses_bad_requests(
    sim: Simulator, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    resp = httpx.get(sim.identity_endpoint, params=params, headers=headers)
    assert resp.status_code == status
    assert "access_token" not in resp.json()


def test_missing_foreign_and_other_audience_tokens_are_401_and_never_echoed(sim: Simulator) -> None:
    other_audience = get_token(sim, resource="https://management.azure.com")
    for headers in (
        {},
        {"Authorization": "Bearer sk-not-ours"},
        {"api-key": "sk-not-ours"},
        {"Authorization": f"Bearer {other_audience}"},
    ):
        resp = httpx.get(f"{sim.base_url}/threads", params={"api-version": "v1"}, headers=headers)
        assert resp.status_code == 401, headers
        assert "sk-not-ours" not in resp.text and other_audience not in resp.text


def test_tokens_expire_after_their_lifetime() -> None:
    token_clock = FakeClock(start=START)
    with Simulator(flavor="foundry", token_lifetime=310, token_clock=token_clock) as s:
        token = get_token(s)
        with api(s, token) as http:
            token_clock.advance(309)
            assert http.get("/threads").status_code == 200
            token_clock.advance(1)
            resp = http.get("/threads")
            assert resp.status_code == 401
            assert "expired" in resp.json()["error"]["message"]
            assert token not in resp.text
        with api(s, get_token(s)) as http:  # a fresh token works again
            assert http.get("/threads").status_code == 200
        assert s.tokens.issued == 2


def test_the_default_flavor_is_unchanged() -> None:
    with Simulator() as s:
        assert s.base_url.endswith("/v1")
        headers = {"Authorization": "Bearer anything", "OpenAI-Beta": "assistants=v2"}
        tid = s.thread_ids()[0]
        page = httpx.get(f"{s.base_url}/threads/{tid}/runs", headers=headers).json()
        assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
        assert httpx.get(f"{s.base_url}/threads", headers=headers).status_code == 404
        assert httpx.get(s.identity_endpoint, headers=headers).status_code == 404


def test_bad_flavor_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--flavor", "bedrock"], ["--token-lifetime", "0"], ["--project", "a/b"]):
        assert simulate_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1


def test_bad_constructor_arguments_raise() -> None:
    with pytest.raises(ValueError, match="flavor"):
        Simulator(flavor="bedrock")
    with pytest.raises(ValueError, match="token_lifetime"):
        Simulator(flavor="foundry", token_lifetime=0)


@pytest.mark.slow
def test_cli_serves_the_foundry_flavor_with_its_identity_endpoint() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SIMULATOR_IDENTITY_HEADER": "from-env"}
    argv = ["--listen", "127.0.0.1:0", "--flavor", "foundry", "--project", "proj-1", "--token-lifetime", "600"]
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = _first_line(proc)
        match = re.search(r"endpoint=(\S+) identity_endpoint=(\S+) identity_header=(\S+) threads=(\S+)", line)
        assert match and "flavor=foundry" in line, line
        endpoint, identity, header, threads = match.groups()
        assert endpoint.endswith("/api/projects/proj-1") and header == "from-env"
        resp = httpx.get(
            identity, params={"resource": RESOURCE, "api-version": "2019-08-01"}, headers={"X-IDENTITY-HEADER": header}
        )
        body = resp.json()
        assert 595 <= int(body["expires_on"]) - time.time() <= 600
        runs = httpx.get(
            f"{endpoint}/threads/{threads.split(',')[0]}/runs",
            params={"api-version": "2025-05-01"},
            headers={"Authorization": f"Bearer {body['access_token']}"},
        )
        assert runs.status_code == 200 and "first_id" not in runs.json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_discovery_scenario_has_content_filter_incomplete_reasons_in_the_api_and_the_truth(
    sim: Simulator, clock: FakeClock
) -> None:
    clock.advance(600)
    reasons = [r["incomplete_details"]["reason"] for r in sim.engine.runs() if r["status"] == "incomplete"]
    truth = sim.engine.truth()
    assert truth.incomplete_reasons.get("content_filter", 0) == reasons.count("content_filter") > 0
    assert set(truth.incomplete_reasons) == set(reasons)
