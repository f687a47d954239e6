"""The Responses API of the simulator: background responses that move through
`queued -> in_progress -> completed | failed | cancelled | incomplete` on the simulator's clock.

A response's whole future is drawn when it is created (how long it waits, how long it works, how it ends),
so its status at any time is a pure function of the clock, and `truth()` knows every outcome exactly.
Terminal transitions become webhook events (`take_events`) for the signed sender (simulator/webhooks.py).
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.simulator.clock import Clock
from exporter.simulator.wire import JSON, ApiError

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "incomplete"})
# The spec's ResponseErrorCode values the mix draws from (the most common first).
ERROR_CODES: tuple[str, ...] = ("server_error", "rate_limit_exceeded", "invalid_prompt", "vector_store_timeout",
                                "invalid_image")
# The spec's incomplete_details.reason values.
INCOMPLETE_REASONS: tuple[str, ...] = ("max_output_tokens", "content_filter")
MODELS: tuple[str, ...] = ("gpt-4o", "gpt-4.1-mini")


@dataclass(frozen=True, slots=True)
class ResponseMix:
    """Outcome weights of the responses a scenario creates, and their timings (seconds, before speed)."""

    completed: float = 0.70
    failed: float = 0.15
    incomplete: float = 0.10
    cancelled: float = 0.05  # cancelled by the "application" while queued or in progress
    queue_seconds: tuple[float, float] = (0.5, 3.0)
    work_seconds: tuple[float, float] = (1.0, 6.0)


@dataclass(slots=True)
class _Response:
    id: str
    created_at: float
    model: str
    background: bool
    agent_name: str | None
    queued_until: float
    ends_at: float
    outcome: str  # the terminal status it reaches unless cancelled first
    error_code: str | None = None
    reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cancelled_at: float | None = None
    announced: bool = False  # its terminal event was handed to the webhook sender
    metadata: dict[str, str] = field(default_factory=dict)

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and self.cancelled_at <= now:
            return "cancelled"
        if now < self.queued_until:
            return "queued"
        if now < self.ends_at:
            return "in_progress"
        return self.outcome

    def ended_at(self) -> float:
        return self.cancelled_at if self.cancelled_at is not None else self.ends_at


@dataclass(frozen=True, slots=True)
class ResponseEvent:
    """A terminal webhook event: `created_at` is when the response ended."""

    id: str
    type: str
    created_at: int
    response_id: str

    def envelope(self) -> JSON:
        return {"id": self.id, "object": "event", "type": self.type, "created_at": self.created_at,
                "data": {"id": self.response_id}}


@dataclass(slots=True)
class ResponseTruth:
    """What really happened to the responses created so far, at one instant."""

    by_status: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0


class ResponseEngine:
    """Background responses on a clock. Thread-safe: HTTP handler threads and the webhook sender share it."""

    def __init__(self, clock: Clock, seed: int = 0, speed: float = 1.0, mix: ResponseMix | None = None) -> None:
        self.clock = clock
        self.speed = speed
        self.mix = mix if mix is not None else ResponseMix()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._responses: dict[str, _Response] = {}
        self._order: list[str] = []  # creation order

    # -- creation -------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> JSON:
        """POST /responses: background -> queued; otherwise the finished response."""
        background = body.get("background") is True
        model = body.get("model") if isinstance(body.get("model"), str) else None
        agent = body.get("agent")
        agent_name = agent.get("name") if isinstance(agent, dict) and isinstance(agent.get("name"), str) else None
        with self._lock:
            resp = self._new(model, background, agent_name)
            if not background:  # the call waits for the model: the response is finished when it returns
                resp.queued_until = resp.ends_at = resp.created_at
                if resp.outcome == "cancelled":
                    resp.outcome = "completed"
                resp.announced = True  # only background responses send webhooks
            return self._render(resp, self.clock.now())

    def spawn(self, count: int, agent_name: str | None = None) -> list[str]:
        """Create `count` background responses with the mix's outcomes (a scenario's workload)."""
        with self._lock:
            return [self._new(None, True, agent_name).id for _ in range(count)]

    def _new(self, model: str | None, background: bool, agent_name: str | None) -> _Response:
        mix, rng, now = self.mix, self._rng, self.clock.now()
        queued = rng.uniform(*mix.queue_seconds) / self.speed
        work = rng.uniform(*mix.work_seconds) / self.speed
        outcome = rng.choices(("completed", "failed", "incomplete", "cancelled"),
                              (mix.completed, mix.failed, mix.incomplete, mix.cancelled))[0]
        resp = _Response("resp_" + secrets.token_hex(12), round(now, 3), model or rng.choice(MODELS), background,
                         agent_name, now + queued, now + queued + work, outcome)
        if outcome == "cancelled":
            resp.outcome = "completed"
            resp.cancelled_at = now + rng.uniform(0.0, queued + work)
        elif outcome == "failed":
            resp.error_code = rng.choices(ERROR_CODES, (5, 3, 2, 1, 1))[0]
        elif outcome == "incomplete":
            resp.reason = rng.choice(INCOMPLETE_REASONS)
        if outcome != "failed":
            resp.input_tokens = rng.randint(20, 2000)
            resp.output_tokens = rng.randint(1, 800)
        self._responses[resp.id] = resp
        self._order.append(resp.id)
        return resp

    # -- the API --------------------------------------------------------------------------

    def get(self, response_id: str) -> JSON:
        with self._lock:
            return self._render(self._find(response_id), self.clock.now())

    def cancel(self, response_id: str) -> JSON:
        """POST /responses/{id}/cancel: only background responses; a finished one is returned as it is."""
        with self._lock:
            resp = self._find(response_id)
            if not resp.background:
                raise ApiError(400, "Only responses created with background=true can be cancelled.",
                               param="response_id")
            now = self.clock.now()
            if resp.status(now) not in TERMINAL:
                resp.cancelled_at = now
            return self._render(resp, now)

    def listing(self, *, agent_name: str | None, order: str, after: str | None, limit: int) -> JSON:
        """Foundry's GET /openai/v1/responses: newest first by default, `after` cursor, `agent_name` filter."""
        with self._lock:
            ids = [i for i in self._order if agent_name is None or self._responses[i].agent_name == agent_name]
            if order == "desc":
                ids.reverse()
            if after is not None:
                ids = ids[ids.index(after) + 1:] if after in ids else []
            page, now = ids[:limit], self.clock.now()
            data = [self._render(self._responses[i], now) for i in page]
        return {"object": "list", "data": data, "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None, "has_more": len(ids) > limit}

    def _find(self, response_id: str) -> _Response:
        resp = self._responses.get(response_id)
        if resp is None:
            raise ApiError(404, f"Response with id '{response_id[:80]}' not found.", param="response_id")
        return resp

    def _render(self, resp: _Response, now: float) -> JSON:
        status = resp.status(now)
        done = status in ("completed", "incomplete")
        usage = None
        if done:
            usage = {"input_tokens": resp.input_tokens,
                     "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                     "output_tokens": resp.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": resp.input_tokens + resp.output_tokens}
        content = [{"type": "output_text", "text": "Done.", "annotations": [], "logprobs": []}]
        text = [{"type": "message", "id": "msg_" + resp.id[5:], "status": "completed", "role": "assistant",
                 "content": content}] if done else []
        return {
            "id": resp.id,
            "object": "response",
            "created_at": resp.created_at,
            "status": status,
            "background": resp.background,
            "completed_at": int(resp.ends_at) if status == "completed" else None,
            "error": ({"code": resp.error_code, "message": "The response failed."}
                      if status == "failed" and resp.error_code else None),
            "incomplete_details": {"reason": resp.reason} if status == "incomplete" else None,
            "instructions": None,
            "model": resp.model,
            "output": text,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "metadata": dict(resp.metadata),
            "temperature": 1.0,
            "top_p": 1.0,
            "tool_choice": "auto",
            "tools": [],
            **({"usage": usage} if usage is not None else {}),
        }

    # -- webhooks and truth ---------------------------------------------------------------

    def take_events(self) -> list[ResponseEvent]:
        """Terminal events of background responses that ended since the last call, in end order."""
        now = self.clock.now()
        out: list[tuple[float, ResponseEvent]] = []
        with self._lock:
            for resp in self._responses.values():
                if resp.announced or not resp.background:
                    continue
                status = resp.status(now)
                if status in TERMINAL:
                    resp.announced = True
                    ended = resp.ended_at()
                    out.append((ended, ResponseEvent("evt_" + secrets.token_hex(12), f"response.{status}",
                                                     int(ended), resp.id)))
        out.sort(key=lambda pair: pair[0])
        return [event for _, event in out]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._order)

    def truth(self, agent_name: str | None = None) -> ResponseTruth:
        """Every response so far (or one agent's)."""
        now = self.clock.now()
        truth = ResponseTruth()
        with self._lock:
            for resp in self._responses.values():
                if agent_name is not None and resp.agent_name != agent_name:
                    continue
                status = resp.status(now)
                truth.by_status[status] = truth.by_status.get(status, 0) + 1
                if status == "failed" and resp.error_code:
                    truth.errors[resp.error_code] = truth.errors.get(resp.error_code, 0) + 1
                if status == "incomplete" and resp.reason:
                    truth.reasons[resp.reason] = truth.reasons.get(resp.reason, 0) + 1
                if status in ("completed", "incomplete"):
                    truth.input_tokens += resp.input_tokens
                    truth.output_tokens += resp.output_tokens
        return truth

    def all_terminal(self) -> bool:
        now = self.clock.now()
        with self._lock:
            return all(r.status(now) in TERMINAL for r in self._responses.values())


class _Req(Protocol):
    params: dict[str, str]
    body: dict[str, Any]

    def arg(self, name: str) -> str | None: ...


def response_routes(engine: ResponseEngine, foundry: bool) -> list[tuple[str, str, Callable[[Any], JSON]]]:
    """(method, path pattern, handler) for the server's router; Foundry serves them under /openai/v1."""
    rid = r"(?P<response_id>[^/]+)"

    def listing(r: _Req) -> JSON:
        from exporter.simulator.server import _parse_limit, _parse_order  # the same validation as runs

        return engine.listing(agent_name=r.arg("agent_name"), order=_parse_order(r.arg("order")), after=r.arg("after"),
                           limit=_parse_limit(r.arg("limit")))

    base = "/openai/v1/responses" if foundry else "/responses"
    routes: list[tuple[str, str, Callable[[Any], JSON]]] = [
        ("POST", base, lambda r: engine.create(r.body)),
        ("GET", f"{base}/{rid}", lambda r: engine.get(r.params["response_id"])),
        ("POST", f"{base}/{rid}/cancel", lambda r: engine.cancel(r.params["response_id"])),
    ]
    if foundry:  # OpenAI has no list endpoint for responses; Foundry's new agents have
        routes.append(("GET", base, listing))
    return routes


class ResponseWorkload:
    """A thread that creates background responses at `rate` per second (the mix decides their outcomes)."""

    def __init__(self, engine: ResponseEngine, rate: float, agent_name: str | None = None,
                 tick: float = 0.1) -> None:
        self.engine = engine
        self.rate = rate
        self.agent_name = agent_name
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulator-responses", daemon=True)

    def start(self) -> ResponseWorkload:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        owed = 0.0  # fractional responses carried to the next tick, so the long-run rate is exact
        while not self._stop.wait(self.tick):
            owed += self.rate * self.tick
            count, owed = int(owed), owed - int(owed)
            if count:
                self.engine.spawn(count, self.agent_name)
