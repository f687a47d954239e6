"""The Responses source over real HTTP against the simulator: fetch by id (ok, gone, malformed, errors) and
Foundry-style discovery (newest first, down to the lookback or a known response, per agent)."""

from __future__ import annotations

import asyncio

from exporter.model import REASON_MALFORMED_PAGE
from exporter.simulator import FakeClock, Simulator
from exporter.sources import DiscoveryResult
from exporter.sources.assistants import ApiSettings, AssistantsSource
from exporter.sources.http import Got
from exporter.sources.responses import ResponseDiscovery, ResponsesSource


def _client(base_url: str, requests: list[tuple[str, str]]) -> AssistantsSource:
    settings = ApiSettings(base_url=base_url, api_key="sk-test", max_requests_per_second=1000, max_attempts=1)
    return AssistantsSource(settings, on_request=lambda endpoint, code: requests.append((endpoint, code)))


def test_fetch_reports_the_response_then_gone_for_an_unknown_id() -> None:
    clock = FakeClock()
    with Simulator(seed=1, clock=clock) as sim:
        [rid] = sim.responses.spawn(1)
        requests: list[tuple[str, str]] = []

        async def go() -> list[object]:
            source = ResponsesSource(_client(sim.base_url, requests))
            first = await source.fetch(rid)
            clock.advance(60)
            last = await source.fetch(rid)
            missing = await source.fetch("resp_nope")
            await source.aclose()
            return [first, last, missing]

        first, last, missing = asyncio.run(go())
    assert first.outcome == "ok" and first.run.status == "queued" and first.run.source == "responses"  # type: ignore[attr-defined]
    assert last.run.terminal and last.run.created_at == int(first.run.created_at)  # type: ignore[attr-defined]
    assert missing.outcome == "gone" and missing.run is None  # type: ignore[attr-defined]
    assert requests == [("get_response", "200"), ("get_response", "200"), ("get_response", "404")]


class _Stub:
    """An ObjectClient answering from fixed bodies."""

    def __init__(self, got: Got, pages: list[bytes | None] | None = None) -> None:
        self.got = got
        self.pages = list(pages or [])
        self.params: list[dict[str, str]] = []

    async def get_object(self, path: str, endpoint: str) -> Got:
        return self.got

    async def get_page(self, path: str, params: dict[str, str], endpoint: str) -> bytes | None:
        self.params.append(params)
        return self.pages.pop(0) if self.pages else None

    async def aclose(self) -> None:
        pass


def test_fetch_errors_and_malformed_bodies_are_errors_never_exceptions() -> None:
    cases = [
        (Got(None, False, False, "timeout (ReadTimeout) after 3 attempts"), "error", None),
        (Got(b"{not json", False, True, None), "error", REASON_MALFORMED_PAGE),
        (Got(b'{"id": "resp_other", "status": "queued", "created_at": 1}', False, True, None), "error",
         REASON_MALFORMED_PAGE),
        (Got(b'{"id": "resp_1", "status": "queued", "created_at": "soon"}', False, True, None), "error",
         "wrong_type"),
    ]
    for got, outcome, reason in cases:
        result = asyncio.run(ResponsesSource(_Stub(got)).fetch("resp_1"))
        assert (result.outcome, result.invalid_reason) == (outcome, reason)
        assert result.error is not None and "sk-" not in result.error


def _page(items: list[tuple[str, float]], has_more: bool) -> bytes:
    import json

    data = [{"id": i, "object": "response", "status": "completed", "created_at": c} for i, c in items]
    return json.dumps({"object": "list", "data": data, "has_more": has_more,
                       "last_id": items[-1][0] if items else None}).encode()


def test_discovery_pages_newest_first_and_stops_at_the_lookback_or_a_known_response() -> None:
    now = 1_790_000_000.0
    pages = [_page([("r5", now - 1), ("r4", now - 2)], True), _page([("r3", now - 3), ("r2", now - 500)], True)]
    stub = _Stub(Got(None, False, False, None), pages)
    found = asyncio.run(ResponseDiscovery(stub, 100.0, wall=lambda: now).discover(lambda _: False))
    assert found.scopes == [("r5", int(now - 1)), ("r4", int(now - 2)), ("r3", int(now - 3))]
    assert stub.params[1]["after"] == "r4" and stub.params[0] == {"order": "desc", "limit": "100"}
    stub = _Stub(Got(None, False, False, None), [_page([("r5", now - 1), ("r4", now - 2)], True)])
    found = asyncio.run(ResponseDiscovery(stub, 100.0, wall=lambda: now).discover(lambda i: i == "r4"))
    assert found.scopes == [("r5", int(now - 1))] and len(stub.params) == 1


def test_discovery_stops_at_a_repeated_cursor_or_a_malformed_page_and_counts_it() -> None:
    now = 1_790_000_000.0
    same = _page([("r5", now - 1), ("r4", now - 2)], True)
    stub = _Stub(Got(None, False, False, None), [same, same, same])
    found = asyncio.run(ResponseDiscovery(stub, 100.0, wall=lambda: now).discover(lambda _: False))
    assert found.scopes == [("r5", int(now - 1)), ("r4", int(now - 2))] and len(stub.params) == 2
    assert found.invalid == {"malformed_page": 1} and found.error == "response discovery stopped early (loop)"
    stub = _Stub(Got(None, False, False, None), [b'{"data": [' + b"[" * 100_000])
    found = asyncio.run(ResponseDiscovery(stub, 100.0, ("a", "b"), wall=lambda: now).discover(lambda _: False))
    assert found.invalid == {"malformed_page": 1} and found.api_reached
    assert found.error == "response discovery stopped early (malformed, error)"  # b's request found no page


def test_discovery_skips_a_bad_item_between_good_ones() -> None:
    import json

    now = 1_790_000_000.0
    good = {"object": "response", "status": "completed", "created_at": now - 1}
    data = [{**good, "id": "r3"}, {**good, "id": "r/2"}, {**good, "id": "r1", "created_at": float("nan")},
            {**good, "id": "r0", "status": "paused"}]
    stub = _Stub(Got(None, False, False, None), [json.dumps({"data": data, "has_more": False}).encode()])
    found = asyncio.run(ResponseDiscovery(stub, 100.0, wall=lambda: now).discover(lambda _: False))
    assert [i for i, _ in found.scopes] == ["r3", "r0"]  # the status is judged when fetched by id
    assert found.invalid == {"wrong_type": 2} and found.error is None


def test_discovery_filters_by_each_agent_on_the_simulator() -> None:
    clock = FakeClock()
    with Simulator(seed=3, clock=clock, flavor="foundry") as sim:
        a = sim.responses.spawn(120, agent_name="a")
        b = sim.responses.spawn(5, agent_name="b")
        sim.responses.spawn(7, agent_name="c")
        token = sim.tokens.issue("https://ai.azure.com")["access_token"]
        settings = ApiSettings(base_url=f"{sim.base_url}/openai/v1", api_key=token, max_requests_per_second=1000)
        requests: list[tuple[str, str]] = []

        async def go() -> DiscoveryResult:
            source = AssistantsSource(settings, on_request=lambda e, c: requests.append((e, c)))
            try:
                return await ResponseDiscovery(source, 3600.0, ("a", "b"), wall=clock.now).discover(lambda _: False)
            finally:
                await source.aclose()

        found = asyncio.run(go())
    assert [i for i, _ in found.scopes] == a[::-1] + b[::-1]
    assert requests == [("list_responses", "200")] * 3 and found.api_reached and found.error is None
