"""AssistantsSource against httpx.MockTransport: requests, paging, validation, retries, rate limits.

No network and no real sleeps: an injected sleep advances a fake clock and records the delays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import __version__, statuses
from exporter.model import RunSnapshot
from exporter.sources import PollResult
from exporter.sources import http as http_client
from exporter.sources.assistants import ApiSettings, AssistantsSource, backoff_delay, parse_retry_after
from exporter.sources.http import STALL_AFTER
from tests.conftest import FakeTime

KEY = "sk-test-SECRET-0123456789abcdef"
BASE = "http://api.test/v1"
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]




class MaxRng(random.Random):
    """Full jitter always picks the top of the range, so the backoff ceiling is observable."""

    def random(self) -> float:
        return 1.0


@dataclass
class Harness:
    handler: Handler
    settings: ApiSettings = field(default_factory=lambda: ApiSettings(base_url=BASE, api_key=KEY))
    time: FakeTime = field(default_factory=FakeTime)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    requests: list[httpx.Request] = field(default_factory=list)
    codes: list[tuple[str, str]] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    source: AssistantsSource | None = None

    def _build(self) -> AssistantsSource:
        async def recording(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            self.request_times.append(self.time.now)
            reply = self.handler(request)
            return reply if isinstance(reply, httpx.Response) else await reply

        self.source = AssistantsSource(
            self.settings,
            on_request=lambda endpoint, code: self.codes.append((endpoint, code)),
            on_rate_limit_remaining=self.remaining.append,
            transport=httpx.MockTransport(recording),
            clock=self.time.clock,
            sleep=self.time.sleep,
            rng=self.rng,
        )
        return self.source

    def poll(
        self, thread_id: str = "thread_a", stop: Callable[[Sequence[RunSnapshot]], bool] | None = None
    ) -> PollResult:
        return self.poll_many([thread_id], stop)[0]

    def poll_many(
        self, thread_ids: Sequence[str], stop: Callable[[Sequence[RunSnapshot]], bool] | None = None
    ) -> list[PollResult]:
        rule = stop or (lambda runs: False)

        async def run() -> list[PollResult]:
            source = self._build()
            try:
                return list(await asyncio.gather(*(source.poll(t, rule) for t in thread_ids)))
            finally:
                await source.aclose()

        return asyncio.run(run())

    @property
    def status_codes(self) -> list[str]:
        return [code for _, code in self.codes]


def run_obj(i: int, thread_id: str = "thread_a", status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"run_{i:05d}",
        "object": "thread.run",
        "thread_id": thread_id,
        "assistant_id": "asst_1",
        "status": status,
        "created_at": 1_700_000_000 + i,
        "completed_at": 1_700_000_010 + i if status == "completed" else None,
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def page(items: list[Any], has_more: bool = False, last_id: Any = "auto", **kw: Any) -> httpx.Response:
    if last_id == "auto":
        last_id = items[-1]["id"] if items and isinstance(items[-1], dict) and "id" in items[-1] else None
    body = {"object": "list", "data": items, "first_id": None, "last_id": last_id, "has_more": has_more}
    return httpx.Response(200, json=body, **kw)


class FakeApi:
    """Serves runs newest first with `limit` and `after`, like the real listing."""

    def __init__(self, runs_per_thread: dict[str, int]) -> None:
        self.runs = {
            t: [run_obj(i, t) for i in reversed(range(n))] for t, n in runs_per_thread.items()
        }  # newest (highest i) first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        thread_id = request.url.path.split("/")[-2]
        runs = self.runs.get(thread_id)
        if runs is None:
            return httpx.Response(404, json={"error": {"message": "No thread found"}})
        limit = int(request.url.params.get("limit", "20"))
        start = 0
        after = request.url.params.get("after")
        if after is not None:
            start = next(i for i, r in enumerate(runs) if r["id"] == after) + 1
        chunk = runs[start : start + limit]
        return page(chunk, has_more=start + limit < len(runs))


def never(runs: Sequence[RunSnapshot]) -> bool:
    return False


# --- the request itself ---------------------------------------------------------------------


def test_request_shape_with_bearer_auth() -> None:
    h = Harness(FakeApi({"thread_a": 3}))
    result = h.poll()
    assert result.outcome == "ok" and result.complete
    [req] = h.requests
    assert req.method == "GET"
    assert str(req.url) == "http://api.test/v1/threads/thread_a/runs?order=desc&limit=100"
    assert req.headers["OpenAI-Beta"] == "assistants=v2"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.headers["User-Agent"] == f"assistants-exporter/{__version__}"
    for absent in ("api-key", "OpenAI-Organization", "OpenAI-Project"):
        assert absent not in req.headers


def test_request_shape_with_azure_api_key_and_org_project() -> None:
    settings = ApiSettings(
        base_url="https://x.openai.azure.com/openai/",
        api_key=KEY,
        auth_header="api-key",
        api_version="2024-05-01-preview",
        organization="org-1",
        project="proj_1",
        page_limit=50,
    )
    h = Harness(lambda r: page([run_obj(1)]), settings=settings)
    assert h.poll("thread_a").outcome == "ok"
    [req] = h.requests
    assert req.url.host == "x.openai.azure.com"
    assert req.url.path == "/openai/threads/thread_a/runs"
    assert dict(req.url.params) == {"order": "desc", "limit": "50", "api-version": "2024-05-01-preview"}
    assert req.headers["api-key"] == KEY
    assert "Authorization" not in req.headers
    assert req.headers["OpenAI-Organization"] == "org-1"
    assert req.headers["OpenAI-Project"] == "proj_1"
    assert req.headers["OpenAI-Beta"] == "assistants=v2"


def test_api_version_is_kept_on_follow_up_pages() -> None:
    settings = ApiSettings(base_url=BASE, api_key=KEY, api_version="2024-05-01-preview", page_limit=2)
    h = Harness(FakeApi({"thread_a": 3}), settings=settings)
    assert h.poll().complete
    assert [dict(r.url.params) for r in h.requests] == [
        {"order": "desc", "limit": "2", "api-version": "2024-05-01-preview"},
        {"order": "desc", "limit": "2", "after": "run_00001", "api-version": "2024-05-01-preview"},
    ]


def test_empty_key_sends_no_credentials() -> None:
    h = Harness(lambda r: page([]), settings=ApiSettings(base_url=BASE, api_key=""))
    h.poll()
    assert "Authorization" not in h.requests[0].headers
    assert "api-key" not in h.requests[0].headers


def test_thread_id_is_path_quoted() -> None:
    h = Harness(lambda r: page([]))
    assert h.poll("thr_a:b@c+\u00e9").outcome == "ok"
    assert h.requests[0].url.raw_path == b"/v1/threads/thr_a%3Ab%40c%2B%C3%A9/runs?order=desc&limit=100"


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "a\nb", "a\x00b", "a\x7fb", "x" * 257, "thr a?b#c%d"])
def test_bad_thread_ids_are_rejected_without_a_request(bad: str) -> None:
    h = Harness(lambda r: page([]))
    result = h.poll(bad)
    assert result.outcome == "error" and result.error
    assert not result.api_reached
    assert h.requests == [] and h.codes == []


# --- paging -----------------------------------------------------------------------------------


def test_follows_after_cursor_until_has_more_is_false() -> None:
    h = Harness(FakeApi({"thread_a": 250}))
    result = h.poll()
    assert result.outcome == "ok" and result.complete and result.api_reached
    assert [r.id for r in result.runs] == [f"run_{i:05d}" for i in reversed(range(250))]
    assert [r.url.params.get("after") for r in h.requests] == [None, "run_00150", "run_00050"]
    assert result.invalid == {}
    assert h.status_codes == ["200", "200", "200"]


def test_stop_rule_after_first_page_makes_one_request() -> None:
    seen: list[int] = []

    def stop(runs: Sequence[RunSnapshot]) -> bool:
        seen.append(len(runs))
        return True

    h = Harness(FakeApi({"thread_a": 250}))
    result = h.poll(stop=stop)
    assert len(h.requests) == 1
    assert seen == [100]
    assert result.outcome == "ok" and not result.complete
    assert len(result.runs) == 100


def test_stop_rule_sees_all_runs_so_far() -> None:
    seen: list[int] = []

    def stop(runs: Sequence[RunSnapshot]) -> bool:
        seen.append(len(runs))
        return len(runs) >= 200

    h = Harness(FakeApi({"thread_a": 350}))
    result = h.poll(stop=stop)
    assert seen == [100, 200]
    assert len(h.requests) == 2 and len(result.runs) == 200


def test_invalid_items_are_counted_by_reason_and_the_rest_kept() -> None:
    items: list[Any] = [
        run_obj(1),
        42,  # not_object
        {"status": "completed", "created_at": 1},  # missing_id
        {"id": 7, "status": "completed", "created_at": 1},  # wrong_type
        {"id": "run_ts", "status": "completed", "created_at": "yesterday"},  # wrong_type
        {**run_obj(2), "status": None},  # missing_status, kept as unknown
        {**run_obj(3), "status": "teleporting"},  # unknown_status, kept as unknown
        run_obj(4, status="in_progress"),
    ]
    h = Harness(lambda r: page(items, last_id="run_00004"))
    result = h.poll()
    assert result.outcome == "ok" and result.complete
    assert result.invalid == {
        "not_object": 1,
        "missing_id": 1,
        "wrong_type": 2,
        "missing_status": 1,
        "unknown_status": 1,
    }
    assert [(r.id, r.status) for r in result.runs] == [
        ("run_00001", "completed"),
        ("run_00002", statuses.UNKNOWN),
        ("run_00003", statuses.UNKNOWN),
        ("run_00004", "in_progress"),
    ]


MALFORMED_BODIES = {
    "truncated json": b'{"object": "list", "data": [{"id": "run_1", "status": "compl',
    "not json": b"<html>502 Bad Gateway</html>",
    "json array": b"[]",
    "json string": b'"data"',
    "no data": b'{"object": "list", "has_more": false}',
    "data not a list": b'{"data": {"id": "run_1"}, "has_more": false}',
    "bad utf-8": b'{"data": [], "x": "\xff\xfe"}',
    "has_more without last_id": b'{"data": [], "has_more": true}',
    "has_more with numeric last_id": b'{"data": [], "has_more": true, "last_id": 12}',
    "has_more with empty last_id": b'{"data": [], "has_more": true, "last_id": ""}',
    "has_more not a bool": b'{"data": [], "has_more": "yes"}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "empty body": b"",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_page_is_counted_and_ends_the_poll(body: bytes) -> None:
    h = Harness(lambda r: httpx.Response(200, content=body))
    result = h.poll()
    assert result.outcome == "error" and result.error == "malformed page"
    assert result.invalid == {"malformed_page": 1}
    assert result.api_reached and not result.complete
    assert result.runs == []
    assert len(h.requests) == 1  # malformed is not retried


def test_malformed_second_page_keeps_first_page_runs() -> None:
    replies = iter([page([run_obj(2), run_obj(1)], has_more=True), httpx.Response(200, content=b"{trunc")])
    h = Harness(lambda r: next(replies))
    result = h.poll()
    assert result.outcome == "error"
    assert [r.id for r in result.runs] == ["run_00002", "run_00001"]
    assert result.invalid == {"malformed_page": 1}


def test_repeating_cursor_is_malformed() -> None:
    h = Harness(lambda r: page([run_obj(1)], has_more=True, last_id="run_same"))
    result = h.poll()
    assert len(h.requests) == 2
    assert result.outcome == "error" and result.invalid == {"malformed_page": 1}
    assert [r.id for r in result.runs] == ["run_00001"]


def test_pages_per_poll_are_bounded() -> None:
    counter = iter(range(10**6))

    def endless(request: httpx.Request) -> httpx.Response:
        return page([run_obj(next(counter))], has_more=True)

    h = Harness(endless, settings=ApiSettings(base_url=BASE, api_key=KEY, max_pages=5))
    result = h.poll()
    assert len(h.requests) == 5
    assert result.outcome == "ok" and not result.complete and len(result.runs) == 5


def test_oversized_body_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "MAX_BODY_BYTES", 1000)  # the shared client reads bodies
    h = Harness(lambda r: page([run_obj(i) for i in range(20)]))
    result = h.poll()
    assert result.outcome == "error" and result.invalid == {"malformed_page": 1}


# --- status codes -------------------------------------------------------------------------------


def test_404_is_gone() -> None:
    h = Harness(FakeApi({}))
    result = h.poll("thread_deleted")
    assert result.outcome == "gone" and result.api_reached and result.error is None
    assert h.status_codes == ["404"]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_an_error_without_key_material(status: int) -> None:
    h = Harness(lambda r: httpx.Response(status, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    result = h.poll()
    assert result.outcome == "error"
    assert result.error == f"authentication failed ({status})"
    assert not result.api_reached
    assert len(h.requests) == 1  # not retried


@pytest.mark.parametrize("status", [400, 302, 418])
def test_other_statuses_are_errors_and_not_retried(status: int) -> None:
    h = Harness(lambda r: httpx.Response(status, headers={"location": "http://elsewhere.test/"}))
    result = h.poll()
    assert result.outcome == "error" and result.error == f"unexpected status {status}"
    assert len(h.requests) == 1  # redirects are not followed either


def test_success_with_no_content_is_malformed() -> None:
    h = Harness(lambda r: httpx.Response(204))
    assert h.poll().invalid == {"malformed_page": 1}


# --- 429 ----------------------------------------------------------------------------------------


def replies_then(*first: httpx.Response, then: Handler | None = None) -> Handler:
    queue = list(first)
    fallback = then or (lambda r: page([run_obj(1)]))

    def handler(request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        return queue.pop(0) if queue else fallback(request)

    return handler


def test_429_honours_retry_after_ms_over_retry_after() -> None:
    h = Harness(replies_then(httpx.Response(429, headers={"retry-after-ms": "1500", "retry-after": "7"})))
    result = h.poll()
    assert result.outcome == "ok" and result.api_reached
    assert h.time.sleeps == [pytest.approx(1.5)]
    assert h.request_times[1] - h.request_times[0] == pytest.approx(1.5)
    assert h.status_codes == ["429", "200"]


def test_429_retry_after_seconds() -> None:
    h = Harness(replies_then(httpx.Response(429, headers={"retry-after": "3"})))
    assert h.poll().outcome == "ok"
    assert h.time.sleeps == [pytest.approx(3.0)]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "garbage", "retry-after": "9"}, 9.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1.0),
        ({"retry-after": "soon"}, 1.0),
        ({"retry-after": "-5"}, 1.0),
        ({"retry-after": "nan"}, 1.0),
        ({"retry-after": "inf"}, 1.0),
        ({"retry-after": "86400"}, 60.0),
        ({"retry-after-ms": "999999999"}, 60.0),
        ({}, 1.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == pytest.approx(expected)


def test_429_pauses_the_whole_client_and_slows_the_bucket() -> None:
    # One connection, two threads: thread_a's 429 must also hold back thread_b's request.
    settings = ApiSettings(base_url=BASE, api_key=KEY, max_concurrency=1)
    first = {"done": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if "thread_a" in request.url.path and not first["done"]:
            first["done"] = True
            return httpx.Response(429, headers={"retry-after": "4"})
        return page([run_obj(1)])

    h = Harness(handler, settings=settings)
    results = h.poll_many(["thread_a", "thread_b"])
    assert [r.outcome for r in results] == ["ok", "ok"]
    first_429_at = h.request_times[0]
    assert "thread_a" in h.requests[0].url.path
    assert len(h.requests) == 3
    assert all(t >= first_429_at + 4.0 for t in h.request_times[1:])
    assert {r.url.path.split("/")[-2] for r in h.requests[1:]} == {"thread_a", "thread_b"}
    assert h.source is not None
    # Halved to 5/s, then two successes added back 0.5/s each.
    assert h.source.bucket.rate == pytest.approx(6.0)


def test_429_pause_holds_back_requests_already_waiting_for_a_slot() -> None:
    settings = ApiSettings(base_url=BASE, api_key=KEY, max_concurrency=2)
    state = {"429s": 0}
    ids = [f"thread_{i}" for i in range(6)]

    def handler(request: httpx.Request) -> httpx.Response:
        if state["429s"] == 0:
            state["429s"] = 1
            return httpx.Response(429, headers={"retry-after-ms": "2000"})
        return page([])

    h = Harness(handler, settings=settings)
    results = h.poll_many(ids)
    assert all(r.outcome == "ok" for r in results)
    # Only the request already in flight next to the 429 (concurrency 2) can precede the pause.
    start = h.request_times[0]
    early = [t for t in h.request_times if t < start + 2.0]
    assert len(early) <= 2
    assert len(h.requests) == 7


def test_429_exhausting_attempts_is_an_error_but_api_reached() -> None:
    h = Harness(lambda r: httpx.Response(429, headers={"retry-after-ms": "100"}))
    result = h.poll()
    assert result.outcome == "error" and result.api_reached
    assert result.error == "rate limited (429) after 3 attempts"
    assert h.status_codes == ["429", "429", "429"]
    assert h.source is not None and h.source.bucket.rate == pytest.approx(10.0 / 8)


# --- 5xx, timeouts, connection errors -----------------------------------------------------------


def test_5xx_then_success_backs_off_with_growing_delays() -> None:
    h = Harness(
        replies_then(httpx.Response(500), httpx.Response(503)),
        settings=ApiSettings(base_url=BASE, api_key=KEY, max_attempts=3),
        rng=MaxRng(),
    )
    result = h.poll()
    assert result.outcome == "ok" and result.api_reached
    assert h.time.sleeps == [0.5, 1.0]
    assert h.status_codes == ["500", "503", "200"]


def test_backoff_ceiling_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, MaxRng()) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert backoff_delay(10_000, MaxRng()) == 8.0


def test_backoff_is_jittered_within_its_ceiling() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 9) for _ in range(20)]
    ceilings = [min(8.0, 0.5 * 2 ** (n - 1)) for n in range(1, 9) for _ in range(20)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # not a fixed schedule


def test_exhausted_5xx_retries_are_an_error() -> None:
    h = Harness(lambda r: httpx.Response(502), settings=ApiSettings(base_url=BASE, api_key=KEY, max_attempts=6))
    result = h.poll()
    assert result.outcome == "error" and result.error == "server error (502) after 6 attempts"
    assert not result.api_reached
    assert len(h.requests) == 6
    assert len(h.time.sleeps) == 5  # no pointless sleep after the last attempt
    assert all(0 <= d <= min(8.0, 0.5 * 2**i) for i, d in enumerate(h.time.sleeps))


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectTimeout("timed out"), "timeout"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectError("refused"), "connection_error"),
        (httpx.RemoteProtocolError("peer closed"), "connection_error"),
    ],
)
def test_transport_failures_are_retried_then_errors(exc: Exception, code: str) -> None:
    h = Harness(raising(exc), rng=MaxRng())
    result = h.poll()
    assert result.outcome == "error" and not result.api_reached
    assert result.error == f"{code.replace('_', ' ')} ({type(exc).__name__}) after 3 attempts"
    assert h.status_codes == [code] * 3
    assert h.time.sleeps == [0.5, 1.0]


def test_a_reply_that_never_finishes_hits_the_attempt_deadline() -> None:
    # A trickling or stuck server must not hold a poll forever: `timeout` bounds the whole attempt.
    # (This one waits 10 ms of real time: the deadline is the event loop's, not the fake clock's.)
    async def stuck(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    h = Harness(stuck, settings=ApiSettings(base_url=BASE, api_key=KEY, timeout=0.01, max_attempts=1))
    result = h.poll()
    assert result.outcome == "error" and result.error == "timeout (TimeoutError) after 1 attempt"
    assert h.status_codes == ["timeout"]


def test_connection_error_then_success() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused")
        return page([run_obj(1)])

    h = Harness(flaky)
    result = h.poll()
    assert result.outcome == "ok" and len(result.runs) == 1
    assert h.status_codes == ["connection_error", "200"]


# --- hooks --------------------------------------------------------------------------------------


def test_every_attempt_is_reported_to_the_request_hook() -> None:
    h = Harness(
        replies_then(httpx.Response(503), httpx.Response(429), then=FakeApi({"thread_a": 150})),
        rng=MaxRng(),
    )
    result = h.poll()
    assert result.complete
    assert h.codes == [("list_runs", c) for c in ("503", "429", "200", "200")]


def test_rate_limit_remaining_is_reported_when_an_integer() -> None:
    values = iter(["42", " 7 ", "abc", "-1", "3.5", "0"])

    def handler(request: httpx.Request) -> httpx.Response:
        v = next(values)
        more = v != "0"
        return page([run_obj(len(v))], has_more=more, last_id=f"c{v}", headers={"x-ratelimit-remaining-requests": v})

    h = Harness(handler)
    assert h.poll().complete
    assert h.remaining == [42, 7, 0]


def test_failing_hooks_do_not_break_polling() -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("hook bug")

    async def run() -> PollResult:
        source = AssistantsSource(
            ApiSettings(base_url=BASE, api_key=KEY),
            on_request=boom,
            on_rate_limit_remaining=boom,
            transport=httpx.MockTransport(
                lambda r: page([run_obj(1)], headers={"x-ratelimit-remaining-requests": "5"})
            ),
        )
        try:
            return await source.poll("thread_a", never)
        finally:
            await source.aclose()

    result = asyncio.run(run())
    assert result.outcome == "ok" and len(result.runs) == 1


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_requests_in_flight_never_exceed_max_concurrency(limit: int) -> None:
    state = {"in_flight": 0, "peak": 0}
    api = FakeApi({f"thread_{i}": 130 for i in range(20)})

    async def handler(request: httpx.Request) -> httpx.Response:
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        for _ in range(5):
            await asyncio.sleep(0)  # stay "in flight" while other tasks get to run
        state["in_flight"] -= 1
        return api(request)

    settings = ApiSettings(base_url=BASE, api_key=KEY, max_concurrency=limit, max_requests_per_second=1000)
    h = Harness(handler, settings=settings)
    results = h.poll_many([f"thread_{i}" for i in range(20)])
    assert all(r.complete and len(r.runs) == 130 for r in results)
    assert state["peak"] == limit  # reached, never exceeded
    assert len(h.requests) == 40


def test_requests_per_second_are_capped_by_the_bucket() -> None:
    settings = ApiSettings(base_url=BASE, api_key=KEY, max_concurrency=4, max_requests_per_second=2.0)
    h = Harness(FakeApi({f"thread_{i}": 1 for i in range(12)}), settings=settings)
    h.poll_many([f"thread_{i}" for i in range(12)])
    span = h.request_times[-1] - h.request_times[0]
    # A burst of 4, then 8 more at 2/s.
    assert span == pytest.approx(4.0)


def test_client_is_recreated_after_aclose() -> None:
    async def run() -> tuple[PollResult, PollResult]:
        source = AssistantsSource(
            ApiSettings(base_url=BASE, api_key=KEY), transport=httpx.MockTransport(FakeApi({"thread_a": 1}))
        )
        first = await source.poll("thread_a", never)
        await source.aclose()
        second = await source.poll("thread_a", never)
        await source.aclose()
        await source.aclose()  # idempotent
        return first, second

    first, second = asyncio.run(run())
    assert first.outcome == second.outcome == "ok"


def test_started_and_duration_come_from_the_clock() -> None:
    h = Harness(replies_then(httpx.Response(429, headers={"retry-after": "2"})))
    result = h.poll()
    assert result.started == 1000.0
    assert result.duration == pytest.approx(2.0)


# --- secrets ------------------------------------------------------------------------------------


def test_key_is_not_in_repr() -> None:
    s = ApiSettings(base_url=BASE, api_key=KEY, auth_header="api-key")
    assert KEY not in repr(s)
    assert KEY not in str(s)
    source = AssistantsSource(s)
    assert KEY not in repr(source)


def test_key_never_reaches_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo_key = {"error": {"message": f"bad key {KEY}"}}
    scenarios: list[Handler] = [
        lambda r: httpx.Response(401, json=echo_key),
        lambda r: httpx.Response(403, json=echo_key),
        lambda r: httpx.Response(429, json=echo_key, headers={"retry-after": KEY}),
        lambda r: httpx.Response(503, json=echo_key),
        lambda r: httpx.Response(400, json=echo_key),
        lambda r: httpx.Response(200, content=KEY.encode()),
        raising(httpx.ConnectError(f"refused {KEY}")),
        raising(httpx.ReadTimeout(f"timeout {KEY}")),
    ]
    auths: tuple[Literal["bearer", "api-key"], ...] = ("bearer", "api-key")
    for auth in auths:
        for handler in scenarios:
            h = Harness(handler, settings=ApiSettings(base_url=BASE, api_key=KEY, auth_header=auth))
            result = h.poll()
            assert result.outcome == "error"
            assert result.error and KEY not in result.error
            assert KEY not in repr(result)
    assert caplog.records  # retries were logged
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (record.exc_text or "")
    assert KEY not in caplog.text


@pytest.mark.parametrize("field_name", ["api_key", "organization", "project"])
def test_header_values_are_validated_without_echoing_them(field_name: str) -> None:
    bad = KEY + "\r\nX-Injected: 1"
    kwargs: dict[str, Any] = {"base_url": BASE, "api_key": KEY, field_name: bad}
    with pytest.raises(ValueError) as info:
        ApiSettings(**kwargs)
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://x/v1"},
        {"max_concurrency": 0},
        {"max_requests_per_second": 0},
        {"timeout": -1},
        {"page_limit": 101},
        {"max_attempts": 0},
        {"auth_header": "basic"},
    ],
)
def test_settings_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ApiSettings(**{"base_url": BASE, "api_key": KEY, **kwargs})


# --- property: nothing the server sends makes poll_thread raise ---------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
valid_items = st.builds(
    lambda i, status: run_obj(i, status=status),
    st.integers(0, 99_999),
    st.sampled_from([*statuses.API_STATUSES, "Completed", "bogus"]),
)
mutated_items = st.builds(
    lambda item, key, value: {**item, key: value},
    valid_items,
    st.sampled_from(["id", "status", "created_at", "thread_id", "usage", "last_error", "completed_at"]),
    json_values,
)
items = valid_items | mutated_items | json_values
page_bodies = st.builds(
    lambda data, has_more, last_id: {"object": "list", "data": data, "has_more": has_more, "last_id": last_id},
    st.lists(items, max_size=6),
    st.booleans() | json_scalars,
    st.text(max_size=10) | json_scalars,
)
Reply = tuple[int, bytes, dict[str, str]]
replies: st.SearchStrategy[Reply] = st.one_of(
    page_bodies.map(lambda b: (200, json.dumps(b).encode(), {})),
    page_bodies.map(lambda b: (200, json.dumps(b).encode()[: len(json.dumps(b)) // 2], {})),
    json_values.map(lambda v: (200, json.dumps(v).encode(), {})),
    st.binary(max_size=40).map(lambda b: (200, b, {})),
    st.tuples(
        st.sampled_from([400, 401, 403, 404, 429, 500, 502, 503]),
        st.just(b"{}"),
        st.dictionaries(
            st.sampled_from(["retry-after", "retry-after-ms", "x-ratelimit-remaining-requests"]),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10),
        ),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(replies, min_size=1, max_size=6), stop_after=st.integers(1, 5))
def test_random_pages_never_make_poll_thread_raise(script: list[Reply], stop_after: int) -> None:
    queue = list(script)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body, headers = queue.pop(0) if queue else (404, b"", {})
        return httpx.Response(status, content=body, headers=headers)

    calls = {"n": 0}

    def stop(runs: Sequence[RunSnapshot]) -> bool:
        calls["n"] += 1
        return calls["n"] >= stop_after

    h = Harness(handler)
    result = h.poll(stop=stop)
    assert result.outcome in ("ok", "gone", "error")
    assert all(isinstance(r, RunSnapshot) and r.status in statuses.ALL_STATUSES for r in result.runs)
    assert all(count > 0 for count in result.invalid.values())
    assert not result.complete or result.outcome == "ok"
    assert (result.error is None) == (result.outcome != "error")
    assert len(h.codes) == len(h.requests) <= len(script) + 1
    assert KEY not in (result.error or "")


# --- a hanging API ---------------------------------------------------------------------------


def _hangs_until_timeout(h: Harness) -> Handler:
    """What a server that accepted the connection and never answers does: the attempt times out."""
    def handler(request: httpx.Request) -> httpx.Response:
        h.time.now += request.extensions["timeout"]["read"]
        raise httpx.ReadTimeout("timed out")
    return handler


def test_a_hanging_api_ends_the_page_at_the_deadline_not_after_every_attempt() -> None:
    h = Harness(lambda r: httpx.Response(500), settings=ApiSettings(base_url=BASE, api_key=KEY, timeout=10.0,
                                                                       deadline=10.0, max_attempts=3))
    h.handler = _hangs_until_timeout(h)
    result = h.poll()
    assert h.status_codes == ["timeout"]  # one attempt: it used the whole deadline
    assert result.outcome == "error" and not result.api_reached
    assert result.error == "timeout (ReadTimeout) after 1 attempt, deadline of 10s reached"
    assert result.duration == 10.0


def test_later_attempts_get_what_is_left_of_the_deadline() -> None:
    h = Harness(lambda r: httpx.Response(500), rng=MaxRng(),
                settings=ApiSettings(base_url=BASE, api_key=KEY, timeout=10.0, deadline=15.0, max_attempts=3))
    h.handler = _hangs_until_timeout(h)
    h.poll()
    # 10 s, a 0.5 s backoff, then the 4.5 s left.
    assert [r.extensions["timeout"]["read"] for r in h.requests] == [10.0, 4.5]
    assert h.time.sleeps == [0.5]


def test_a_request_unanswered_while_nothing_else_answers_marks_the_source_stalled() -> None:
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.split("/")[-2] != "thread_fast":
            await gate.wait()
        return page([run_obj(1)])

    h = Harness(handler)

    async def settle() -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def scenario() -> None:
        source = h._build()
        slow = asyncio.create_task(source.poll("thread_slow", never))
        await settle()
        assert not source.stalled()
        h.time.now += STALL_AFTER - 0.1
        assert not source.stalled()
        await source.poll("thread_fast", never)  # an answer after the slow request was sent: the API is up
        h.time.now += STALL_AFTER
        assert not source.stalled()
        slower = asyncio.create_task(source.poll("thread_slower", never))  # now nothing answers
        await settle()
        h.time.now += STALL_AFTER - 0.1
        assert not source.stalled()
        h.time.now += 0.2
        assert source.stalled()
        gate.set()
        await asyncio.gather(slow, slower)
        assert not source.stalled()
        await source.aclose()

    asyncio.run(scenario())
