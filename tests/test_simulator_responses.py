"""The simulator's Responses API: every Response validates against the vendored spec, the official SDK
creates, retrieves and cancels on it, and its signed webhook deliveries pass the SDK's `webhooks.unwrap`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from exporter.simulator import FakeClock, Simulator
from exporter.simulator.webhooks import WebhookFaults, WebhookSender
from tests.helpers import wait_until
from tests.simulator_support import errors_for

SECRET = "whsec_" + "c2ltdWxhdG9yLXdlYmhvb2stc2VjcmV0LTMyYnl0ZXMh"


def _check(obj: dict[str, Any]) -> None:
    errors = errors_for("Response", obj)
    assert not errors, errors[:5]


def test_every_response_validates_through_its_whole_life() -> None:
    clock = FakeClock()
    with Simulator(seed=5, clock=clock) as sim:
        http = httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer sk-test"})
        ids = [http.post("/responses", json={"model": "gpt-4o", "input": "hi", "background": True}).json()["id"]
               for _ in range(5)]
        ids += sim.responses.spawn(60)
        statuses: set[str] = set()
        for _ in range(12):
            for rid in ids:
                obj = http.get(f"/responses/{rid}").json()
                _check(obj)
                statuses.add(obj["status"])
            clock.advance(0.7)
        finished = http.post("/responses", json={"model": "gpt-4o", "input": "hi"}).json()
        _check(finished)
        assert finished["status"] in ("completed", "failed", "incomplete") and finished["background"] is False
        _check(http.post(f"/responses/{ids[0]}/cancel").json())
    assert statuses == {"queued", "in_progress", "completed", "failed", "cancelled", "incomplete"}


def test_foundry_lists_responses_newest_first_filtered_by_agent_and_paged() -> None:
    clock = FakeClock()
    with Simulator(seed=2, clock=clock, flavor="foundry") as sim:
        mine = sim.responses.spawn(150, agent_name="billing")
        sim.responses.spawn(20, agent_name="other")
        url = f"http://127.0.0.1:{sim.port}/api/projects/{sim.project}/openai/v1/responses"
        # Foundry's v1 Responses routes take no api-version, and a token from the identity endpoint.
        token = sim.tokens.issue("https://ai.azure.com")["access_token"]
        http = httpx.Client(headers={"Authorization": f"Bearer {token}"})
        seen: list[str] = []
        params: dict[str, str] = {"agent_name": "billing", "limit": "100", "order": "desc"}
        while True:
            page = http.get(url, params=params).json()
            for obj in page["data"][:3]:
                _check(obj)
            seen += [obj["id"] for obj in page["data"]]
            if not page["has_more"]:
                break
            params["after"] = page["last_id"]
    assert seen == mine[::-1]


def test_openai_sdk_creates_retrieves_and_cancels() -> None:
    clock = FakeClock()
    with Simulator(seed=1, clock=clock) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        created = client.responses.create(model="gpt-4o", input="hello", background=True)
        assert created.status == "queued" and created.background is True
        clock.advance(60)
        done = client.responses.retrieve(created.id)
        assert done.id == created.id and done.status in ("completed", "failed", "incomplete", "cancelled")
        other = client.responses.create(model="gpt-4o", input="again", background=True)
        cancelled = client.responses.cancel(other.id)
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(other.id).status == "cancelled"
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_missing")


class _Capture:
    """A webhook endpoint on 127.0.0.1 that records deliveries and answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                capture.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = capture.statuses.pop(0) if capture.statuses else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[_Capture]:
    cap = _Capture([500, 503])  # the first two deliveries are refused: the sender must retry them
    yield cap
    cap.close()


def test_sdk_unwrap_accepts_every_delivery_and_rejects_the_tampered_copies(capture: _Capture) -> None:
    clock = FakeClock()
    with Simulator(seed=4, clock=clock) as sim:
        ids = sim.responses.spawn(30)
        clock.advance(60)
        sender = WebhookSender(sim.responses, capture.url, SECRET,
                               WebhookFaults(duplicate=0.3, reorder=True, bad_signature=0.2, seed=3))
        sender.enqueue(sim.responses.take_events())
        wait_until(lambda: (sender.deliver_due(), sender.idle())[1], timeout=10)
        sender.stop()
    client = openai.OpenAI(api_key="sk-test", webhook_secret=SECRET)
    good: list[str] = []
    bad = 0
    for headers, body in capture.deliveries:
        try:
            event = client.webhooks.unwrap(body, headers)
        except openai.InvalidWebhookSignatureError:
            bad += 1
            continue
        assert event.type.startswith("response.") and event.object == "event"
        assert headers["webhook-id"] == event.id
        good.append(event.data.id)
    assert bad > 0 and bad == sum(1 for _, b in capture.deliveries if b"\"type\":  " in b)
    assert set(good) == set(ids)  # every response's event arrived, the refused ones after a retry
    assert len(good) > len(ids)  # and some twice (duplicates with the same webhook-id)
    assert [s for _, s in sender.sent[:2]] == [500, 503]


def test_the_simulate_command_creates_responses_and_sends_signed_events() -> None:
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT, free_port

    bad = subprocess.run([sys.executable, "-m", "exporter", "simulate", "--webhook-url", "http://127.0.0.1:1/x"],
                         capture_output=True, text=True, cwd=REPO_ROOT, env={"PATH": "", "PYTHONPATH": str(REPO_ROOT)},
                         timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--webhook-secret" in bad.stderr
    cap = _Capture()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "simulate", "--listen", f"127.0.0.1:{port}",
                             "--speed", "10", "--responses-per-second", "20", "--webhook-url", cap.url,
                             "--webhook-reorder", "--webhook-duplicate-rate", "0.2"],
                            env={"PATH": "", "PYTHONPATH": str(REPO_ROOT), "SIMULATOR_WEBHOOK_SECRET": SECRET},
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(cap.deliveries) >= 10, 30, what="webhook deliveries")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        cap.close()
    client = openai.OpenAI(api_key="sk-test", webhook_secret=SECRET)
    for headers, body in cap.deliveries:
        assert client.webhooks.unwrap(body, headers).type.startswith("response.")
