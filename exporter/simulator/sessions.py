"""The OpenAI Agents API (beta) side of the simulator: sessions and their turns, in the SDK's shapes.

`GET /v1/agents/sessions` (after, limit, order, agent_id, metadata[key]=value), `GET /v1/agents/sessions/{id}`,
`GET /v1/agents/sessions/{id}/turns` (after, limit, order) and `GET /v1/agents/sessions/{id}/turns/{turn_id}`,
each requiring `OpenAI-Beta: agents=v1`. Like runs, every turn follows a plan of (status, seconds) stints fixed
when it is created, so its state is a pure function of the plan and the clock. A sessions scenario opens
sessions as turns arrive (a turn goes to a recent session with no unfinished turn, else to a new one), lets
turns wait for input, and may delete old idle sessions (404 from then on).
"""

from __future__ import annotations

import bisect
import math
import random
import re
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.clock import Clock
from exporter.simulator.wire import JSON, ApiError, list_page

TURN_STATUSES: tuple[str, ...] = ("queued", "in_progress", "waiting", "completed", "failed", "cancelled")
TURN_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# A few of the SDK's SessionTurnError codes (a closed Literal there; the exporter treats them as an open set).
TURN_ERROR_CODES: tuple[str, ...] = ("server_error", "rate_limit_exceeded", "context_length_exceeded")
BETA = "agents=v1"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SESSION = r"(?P<session_id>[^/]+)"
_TURN = r"(?P<turn_id>[^/]+)"

TurnPlan = list[tuple[str, float]]
Corrupt = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class SessionsScenario:
    """A sessions workload. Durations are at speed 1; the engine divides them by `speed`."""

    name: str
    description: str
    arrival_rate: float  # new turns per second at speed 1
    sessions: int = 4  # turns go to the most recent sessions with no unfinished turn, at most this many
    new_session_probability: float = 0.15  # chance that a turn opens a new session anyway
    delete_probability: float = 0.0  # per arrival: the oldest idle session beyond the recent ones is deleted
    agents: tuple[tuple[str, str], ...] = (("agent_support", "gpt-5"), ("agent_research", "gpt-5-mini"))
    queue_mean: float = 1.5
    work_mean: float = 5.0
    wait_mean: float = 4.0  # mean seconds a turn waits for input before it goes on
    wait_probability: float = 0.35  # chance of each further wait for input in a turn
    completed: float = 0.85
    failed: float = 0.08
    cancelled: float = 0.07  # cancelled turns are cancelled while they wait for input that never comes


SESSION_SCENARIOS: dict[str, SessionsScenario] = {
    s.name: s
    for s in (
        SessionsScenario("sessions", "turns across a few recent sessions; new sessions open all the time", 0.5),
        SessionsScenario("sessions-churn", "sessions open and are deleted while turns wait for input", 0.6,
                         sessions=3, new_session_probability=0.3, delete_probability=0.1, wait_probability=0.5),
    )
}


@dataclass(frozen=True)
class SessionsTruth:
    """What really happened to turns, for comparing an exporter's numbers against."""

    now: int
    by_status: dict[str, int]  # current (turn) status of every turn the API lists
    finished: dict[str, int]  # terminal status -> turns that ended (at or after `since`)
    error_codes: dict[str, int]
    tokens: dict[str, int]  # {"prompt": input, "completion": output} over those finished turns
    queued_seconds: list[int]  # started_at - created_at of turns that started (at or after `since`)
    durations: dict[str, list[int]]  # terminal status -> completed_at - created_at of those finished turns
    since: int | None = None


@dataclass
class Turn:
    id: str
    session_id: str
    agent_id: str
    created_at: int
    seq: int
    plan: TurnPlan
    error_code: str = "server_error"
    input_tokens: int = 100
    output_tokens: int = 50
    idx: int = 0
    stint_start: float = 0.0
    status: str = "queued"
    started_at: int | None = None
    completed_at: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TURN_TERMINAL

    @property
    def key(self) -> tuple[int, int]:
        return (self.created_at, self.seq)


@dataclass
class Session:
    id: str
    agent_id: str
    model: str
    created_at: int
    seq: int
    metadata: dict[str, str] = field(default_factory=dict)
    last_active_at: int = 0
    order: list[tuple[int, int, str]] = field(default_factory=list)  # (created_at, seq, turn id), ascending
    turns: dict[str, Turn] = field(default_factory=dict)
    open_turns: int = 0
    announced: str = "idle"  # the status its last webhook event said
    listeners: int = 0  # event streams open on it: only then are its stream events kept
    stream_log: deque[tuple[int, JSON]] = field(default_factory=lambda: deque(maxlen=STREAM_BACKLOG))
    stream_seq: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.created_at, self.seq)


# Session status -> the webhook event that announces it (the API's `agent.session.*` events).
SESSION_EVENT_TYPES: dict[str, str] = {
    "in_progress": "agent.session.in_progress",
    "requires_action": "agent.session.action_required",
    "idle": "agent.session.idle",
}
MAX_EVENTS = 100_000  # events not yet taken by a webhook sender; older ones are dropped
STREAM_BACKLOG = 256  # stream events kept per session for its open streams to read
# Session status -> the event a session's live stream carries for it (`AgentSession*Event`).
SESSION_STREAM_TYPES: dict[str, str] = {
    "in_progress": "agent.session.in_progress",
    "requires_action": "agent.session.requires_action",
    "idle": "agent.session.idle",
}


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session webhook event, as `openai.types.webhooks.AgentSession*WebhookEvent` has it."""

    id: str
    type: str
    created_at: int
    session_id: str

    def envelope(self) -> JSON:
        data: JSON = {"id": self.session_id, "environment_type": "none"}
        if self.type == "agent.session.action_required":
            data = {"id": self.session_id, "required_action": {"type": "function_call"}}
        return {"id": self.id, "object": "event", "type": self.type, "created_at": self.created_at, "data": data}


def validate_turn_plan(plan: Sequence[tuple[str, float]]) -> TurnPlan:
    """Non-terminal stints (starting queued or in_progress), then exactly one terminal status."""
    if not plan:
        raise ValueError("a plan needs at least one stint")
    out: TurnPlan = []
    for i, (status, seconds) in enumerate(plan):
        if status not in TURN_STATUSES:
            raise ValueError(f"unknown turn status {status!r}")
        if (status in TURN_TERMINAL) != (i == len(plan) - 1):
            raise ValueError("a plan is non-terminal stints followed by one terminal status")
        if math.isnan(seconds) or seconds < 0 or (math.isinf(seconds) and status != "waiting"):
            raise ValueError(f"bad duration {seconds!r} for {status}")
        out.append((status, float(seconds)))
    if out[0][0] not in ("queued", "in_progress"):
        raise ValueError("a turn starts queued or in_progress")
    return out


def _usage(turn_or_totals: tuple[int, int]) -> JSON:
    inp, out = turn_or_totals
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


def render_turn(turn: Turn) -> JSON:
    """A `Turn` as the SDK's model has it; usage once the turn has ended (it is best effort before)."""
    return {
        "id": turn.id,
        "object": "agent.session.turn",
        "agent_id": turn.agent_id,
        "session_id": turn.session_id,
        "status": turn.status,
        "created_at": turn.created_at,
        "started_at": turn.started_at,
        "completed_at": turn.completed_at,
        "error": ({"code": turn.error_code, "message": "The turn failed."} if turn.status == "failed" else None),
        "usage": _usage((turn.input_tokens, turn.output_tokens)) if turn.terminal else None,
        "subagent_id": None,
        "prompt_cache_options": None,
    }


def _session_status(session: Session) -> str:
    statuses = {session.turns[key[2]].status for key in session.order[-8:]}  # turns run one after another
    if "waiting" in statuses:
        return "requires_action"
    if statuses & {"queued", "in_progress"}:
        return "in_progress"
    return "idle"


def render_session(session: Session) -> JSON:
    """An `AgentSession` as the SDK's model has it (no environment, no tools)."""
    status = _session_status(session)
    waiting = [session.turns[key[2]] for key in session.order if session.turns[key[2]].status == "waiting"]
    ended = [t for t in session.turns.values() if t.terminal]
    return {
        "id": session.id,
        "object": "agent.session",
        "agent": {
            "id": session.agent_id, "instructions": None, "model": session.model,
            "multi_agent": {"enabled": False, "max_concurrent_subagents": None}, "name": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "auto",
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tools": [],
            "compaction": None, "experimental": None,
        },
        "created_at": session.created_at,
        "environment": {"type": "none"},
        "error": None,
        "last_active_at": session.last_active_at,
        "metadata": dict(session.metadata),
        "required_actions": [
            {"type": "function_call", "arguments": {"order_id": "A-1"}, "call_id": "call_" + t.id[5:],
             "name": "lookup_order", "turn_id": t.id} for t in waiting
        ],
        "spend_control": {"consumed": None, "limit": None},  # unlimited (openai >= 3.60 has the field)
        "status": status,
        "usage": _usage((sum(t.input_tokens for t in ended), sum(t.output_tokens for t in ended))) if ended else None,
        "vault_ids": [],
        "prompt_cache_options": None,
    }


class SessionsEngine:
    """Sessions, turns and the sessions workload. Public methods are thread-safe."""

    def __init__(self, clock: Clock, seed: int, speed: float = 1.0, scenario: SessionsScenario | None = None) -> None:
        if speed <= 0 or not math.isfinite(speed):
            raise ValueError("speed must be a positive number")
        self.clock = clock
        self.speed = speed
        self.scenario = scenario
        self._lock = threading.RLock()
        self._work_rng = random.Random(f"{seed}:sessions-workload")
        self._api_rng = random.Random(f"{seed}:sessions-api")
        self._now = clock.now()
        self._seq = 0
        self._sessions: dict[str, Session] = {}
        self._order: list[tuple[int, int, str]] = []  # (created_at, seq, id) of live sessions, ascending
        self._recent: list[str] = []  # the scenario's sessions, oldest first
        self._active: dict[str, Turn] = {}
        self._archive: list[Turn] = []  # turns of deleted sessions, for the truth
        self.deleted: list[str] = []  # ids of the sessions deleted so far
        self._workload = scenario is not None
        self._events: deque[tuple[float, SessionEvent]] = deque(maxlen=MAX_EVENTS)
        self._next_arrival: float | None = self._now + self._gap() if scenario is not None else None

    # ----- time ------------------------------------------------------------------------------------

    def _gap(self) -> float:
        assert self.scenario is not None
        return self._work_rng.expovariate(self.scenario.arrival_rate) / self.speed

    def _advance(self) -> float:
        now = max(self._now, self.clock.now())
        self._now = now
        while self._workload and self._next_arrival is not None and self._next_arrival <= now:
            t = self._next_arrival
            self._arrive(t)
            self._next_arrival = t + self._gap()
        for turn in list(self._active.values()):
            self._advance_turn(turn, now)
        return now

    def _enter(self, turn: Turn, idx: int, t: float) -> None:
        turn.idx, turn.stint_start = idx, t
        turn.status = turn.plan[idx][0]
        if turn.status == "in_progress" and turn.started_at is None:
            turn.started_at = int(t)
        session = self._sessions.get(turn.session_id)
        if session is not None:
            session.last_active_at = max(session.last_active_at, int(t))
        if turn.terminal:
            turn.completed_at = int(t)
            self._active.pop(turn.id, None)
            if session is not None:
                session.open_turns -= 1
        if session is not None:
            if session.listeners:
                self._stream_turn(session, turn, idx)
            self._announce(session, t)

    def _announce(self, session: Session, t: float) -> None:
        """A webhook event when the session's status changed (it is derived from its turns)."""
        status = _session_status(session)
        if status != session.announced:
            session.announced = status
            self._event(SESSION_EVENT_TYPES[status], session.id, t)
            if session.listeners:
                self._stream(session, {"event_id": "evt_" + secrets.token_hex(12),
                                       "type": SESSION_STREAM_TYPES[status], "session": render_session(session)})

    def _stream_turn(self, session: Session, turn: Turn, idx: int) -> None:
        """A turn event on the session's live stream, with the whole turn (and usage once it ended). Waiting
        for input has no turn event: the session's `requires_action` event says it."""
        if idx == 0:
            event_type = "agent.session.turn.created"
        elif turn.status in ("in_progress", *TURN_TERMINAL):
            event_type = f"agent.session.turn.{turn.status}"
        else:
            return
        event: JSON = {"event_id": "evt_" + secrets.token_hex(12), "type": event_type, "session_id": session.id,
                       "turn_id": turn.id, "turn": render_turn(turn)}
        if turn.terminal:
            event["usage"] = _usage((turn.input_tokens, turn.output_tokens))
        self._stream(session, event)

    @staticmethod
    def _stream(session: Session, event: JSON) -> None:
        session.stream_seq += 1
        session.stream_log.append((session.stream_seq, event))

    def _event(self, event_type: str, session_id: str, t: float) -> None:
        self._events.append((t, SessionEvent("evt_" + secrets.token_hex(12), event_type, int(t), session_id)))

    def _advance_turn(self, turn: Turn, now: float) -> None:
        while not turn.terminal:
            end = turn.stint_start + turn.plan[turn.idx][1]
            if end > now:
                return
            self._enter(turn, turn.idx + 1, end)

    # ----- the workload ----------------------------------------------------------------------------

    def _arrive(self, t: float) -> None:
        s = self.scenario
        assert s is not None
        rng = self._work_rng
        recent = [sid for sid in self._recent if sid in self._sessions][-s.sessions:]
        free = [sid for sid in recent if self._sessions[sid].open_turns == 0]
        if not free or rng.random() < s.new_session_probability:
            agent_id, model = rng.choice(s.agents)
            sid = self._new_session(rng, int(t), agent_id, model)
            self._recent.append(sid)
        else:
            sid = rng.choice(free)
        self._add_turn(self._sessions[sid], self._model_plan(rng), t, rng,
                       error_code=rng.choice(TURN_ERROR_CODES))
        if s.delete_probability > 0 and rng.random() < s.delete_probability:
            keep = set(self._recent[-s.sessions:])
            idle = [sid for _, _, sid in self._order if sid not in keep and self._sessions[sid].open_turns == 0]
            if idle:
                self._delete(idle[0])

    def _model_plan(self, rng: random.Random) -> TurnPlan:
        s = self.scenario
        assert s is not None
        k = 1.0 / self.speed
        outcome = rng.choices(("completed", "failed", "cancelled"), weights=(s.completed, s.failed, s.cancelled))[0]
        plan: TurnPlan = [("queued", max(0.2, rng.expovariate(1.0 / s.queue_mean)) * k),
                          ("in_progress", max(0.3, rng.expovariate(1.0 / s.work_mean)) * k)]
        waits = 0
        while waits < 3 and rng.random() < s.wait_probability:
            waits += 1
            plan += [("waiting", max(0.3, rng.expovariate(1.0 / s.wait_mean)) * k),
                     ("in_progress", max(0.3, rng.expovariate(1.0 / s.work_mean)) * k)]
        if outcome == "cancelled":  # the input never came
            plan += [("waiting", 3 * s.wait_mean * k), ("cancelled", 0.0)]
        else:
            plan.append((outcome, 0.0))
        return plan

    # ----- sessions and turns ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_session(self, rng: random.Random, created_at: int, agent_id: str, model: str,
                     metadata: dict[str, str] | None = None) -> str:
        sid = "sess_" + "".join(rng.choice(_ID_ALPHABET) for _ in range(24))
        session = Session(sid, agent_id, model, created_at, self._next_seq(), dict(metadata or {}), created_at)
        self._sessions[sid] = session
        bisect.insort(self._order, (created_at, session.seq, sid))
        self._event("agent.session.created", sid, created_at)
        return sid

    def _add_turn(self, session: Session, plan: TurnPlan, t: float, rng: random.Random, *,
                  error_code: str = "server_error", input_tokens: int | None = None,
                  output_tokens: int | None = None) -> Turn:
        turn = Turn(
            id="turn_" + "".join(rng.choice(_ID_ALPHABET) for _ in range(24)),
            session_id=session.id, agent_id=session.agent_id, created_at=int(t), seq=self._next_seq(), plan=plan,
            error_code=error_code,
            input_tokens=input_tokens if input_tokens is not None else rng.randint(200, 6000),
            output_tokens=output_tokens if output_tokens is not None else rng.randint(20, 1500),
        )
        session.turns[turn.id] = turn
        bisect.insort(session.order, (turn.created_at, turn.seq, turn.id))
        session.open_turns += 1
        self._active[turn.id] = turn
        self._enter(turn, 0, t)
        self._advance_turn(turn, max(t, self._now))
        return turn

    def _delete(self, session_id: str) -> None:
        session = self._session(session_id)
        for turn in session.turns.values():
            self._active.pop(turn.id, None)
            self._archive.append(turn)
        del self._sessions[session_id]
        self.deleted.append(session_id)
        self._order.remove((session.created_at, session.seq, session_id))

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise ApiError(404, f"No session found with id '{session_id}'.")
        return session

    # ----- public: control and ground truth --------------------------------------------------------

    def now(self) -> float:
        with self._lock:
            return self._advance()

    def set_workload(self, enabled: bool) -> None:
        """Pause or resume the scenario's arrivals (turns already going carry on)."""
        with self._lock:
            now = self._advance()
            if enabled and self.scenario is not None and not self._workload:
                self._next_arrival = now + self._gap()
            self._workload = enabled and self.scenario is not None

    def take_events(self) -> list[SessionEvent]:
        """Session webhook events since the last call, in the order they happened."""
        with self._lock:
            self._advance()
            events, self._events = sorted(self._events, key=lambda pair: pair[0]), deque(maxlen=MAX_EVENTS)
            return [event for _, event in events]

    def subscribe(self, session_id: str) -> int:
        """Open a live stream on a session (404 if there is none): the position its events start after."""
        with self._lock:
            self._advance()
            session = self._session(session_id)
            session.listeners += 1
            return session.stream_seq

    def unsubscribe(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.listeners -= 1

    def stream_events(self, session_id: str, after: int) -> tuple[list[tuple[int, JSON]], bool]:
        """The session's stream events after position `after`, and whether the session still exists."""
        with self._lock:
            self._advance()
            session = self._sessions.get(session_id)
            if session is None:
                return [], False
            return [(seq, event) for seq, event in session.stream_log if seq > after], True

    def fail_session(self, session_id: str) -> None:
        """The session fails (its environment broke, say): an `agent.session.failed` event; turns go on."""
        with self._lock:
            now = self._advance()
            self._event("agent.session.failed", self._session(session_id).id, now)

    def session_ids(self) -> list[str]:
        """Every session the API lists, oldest first."""
        with self._lock:
            self._advance()
            return [sid for _, _, sid in self._order]

    def create_session(self, agent_id: str = "agent_scripted", model: str = "gpt-5",
                       metadata: dict[str, str] | None = None) -> str:
        with self._lock:
            now = self._advance()
            return self._new_session(self._api_rng, int(now), agent_id, model, metadata)

    def create_turn(self, session_id: str, plan: Sequence[tuple[str, float]], *, error_code: str = "server_error",
                    input_tokens: int = 100, output_tokens: int = 50) -> str:
        """A scripted turn whose stints last exactly the given seconds (not divided by speed)."""
        with self._lock:
            now = self._advance()
            turn = self._add_turn(self._session(session_id), validate_turn_plan(plan), now, self._api_rng,
                                  error_code=error_code, input_tokens=input_tokens, output_tokens=output_tokens)
            return turn.id

    def delete_session(self, session_id: str) -> None:
        """The session and its turns disappear (404 from now on); finished turns stay in the truth."""
        with self._lock:
            self._advance()
            self._delete(session_id)

    def turns(self) -> list[JSON]:
        """Every turn the API lists, session by session, oldest first."""
        with self._lock:
            self._advance()
            return [render_turn(s.turns[key[2]]) for _, _, sid in self._order
                    for s in (self._sessions[sid],) for key in s.order]

    def truth(self, since: int | None = None) -> SessionsTruth:
        with self._lock:
            now = self._advance()
            live = [t for s in self._sessions.values() for t in s.turns.values()]
            finished: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            tokens = {"prompt": 0, "completion": 0}
            queued: list[int] = []
            durations: dict[str, list[int]] = {}
            for turn in [*self._archive, *live]:
                if turn.started_at is not None and (since is None or turn.started_at >= since):
                    queued.append(turn.started_at - turn.created_at)
                if not turn.terminal or turn.completed_at is None or (since is not None and turn.completed_at < since):
                    continue
                finished[turn.status] += 1
                if turn.status == "failed":
                    errors[turn.error_code] += 1
                tokens["prompt"] += turn.input_tokens
                tokens["completion"] += turn.output_tokens
                durations.setdefault(turn.status, []).append(turn.completed_at - turn.created_at)
            return SessionsTruth(int(now), dict(Counter(t.status for t in live)), dict(finished), dict(errors),
                                 tokens, sorted(queued), {k: sorted(v) for k, v in durations.items()}, since)

    # ----- public: the API's operations (raise ApiError) -------------------------------------------

    def list_sessions(self, *, limit: int, order: str, after: str | None, agent_id: str | None,
                      metadata: dict[str, str]) -> tuple[list[JSON], bool]:
        with self._lock:
            self._advance()
            keys = self._order if order == "asc" else self._order[::-1]
            start = 0
            if after is not None:
                cursor = self._sessions.get(after)
                if cursor is None:
                    raise ApiError(400, f"Invalid 'after': no session with id '{after}'.", param="after")
                start = _position(keys, (cursor.created_at, cursor.seq, cursor.id), order) + 1
            chosen: list[Session] = []
            i = start
            while i < len(keys) and len(chosen) < limit:
                s = self._sessions[keys[i][2]]
                if (agent_id is None or s.agent_id == agent_id) and all(
                        s.metadata.get(k) == v for k, v in metadata.items()):
                    chosen.append(s)
                i += 1
            has_more = any(
                (agent_id is None or self._sessions[k[2]].agent_id == agent_id)
                and all(self._sessions[k[2]].metadata.get(mk) == mv for mk, mv in metadata.items())
                for k in keys[i:]
            )
            return [render_session(s) for s in chosen], has_more

    def get_session(self, session_id: str) -> JSON:
        with self._lock:
            self._advance()
            return render_session(self._session(session_id))

    def list_turns(self, session_id: str, *, limit: int, order: str, after: str | None) -> tuple[list[JSON], bool]:
        with self._lock:
            self._advance()
            session = self._session(session_id)
            keys = session.order if order == "asc" else session.order[::-1]
            start = 0
            if after is not None:
                turn = session.turns.get(after)
                if turn is None:
                    raise ApiError(400, f"Invalid 'after': no turn with id '{after}' in this session.", param="after")
                start = _position(keys, (turn.created_at, turn.seq, turn.id), order) + 1
            chosen = keys[start:start + limit]
            return [render_turn(session.turns[k[2]]) for k in chosen], start + limit < len(keys)

    def get_turn(self, session_id: str, turn_id: str) -> JSON:
        with self._lock:
            self._advance()
            turn = self._session(session_id).turns.get(turn_id)
            if turn is None:
                raise ApiError(404, f"No turn found with id '{turn_id}'.")
            return render_turn(turn)


def _position(keys: list[tuple[int, int, str]], key: tuple[int, int, str], order: str) -> int:
    """Index of `key` in `keys`, which is ascending, or descending when order is desc."""
    if order == "asc":
        return bisect.bisect_left(keys, key)
    return len(keys) - 1 - bisect.bisect_left(keys[::-1], key)


class SessionsApi:
    """The HTTP routes of the Agents API, called by the Simulator for paths under /agents/."""

    def __init__(self, engine: SessionsEngine, parse_limit: Callable[[str | None], int],
                 parse_order: Callable[[str | None], str]) -> None:
        self.engine = engine
        self._limit = parse_limit
        self._order = parse_order
        e = engine
        self._routes: list[tuple[re.Pattern[str], Callable[[dict[str, str], dict[str, list[str]], Corrupt], JSON]]] = [
            (re.compile("^/agents/sessions$"), self._list_sessions),
            (re.compile(f"^/agents/sessions/{_SESSION}$"), lambda p, q, c: e.get_session(p["session_id"])),
            (re.compile(f"^/agents/sessions/{_SESSION}/turns$"), self._list_turns),
            (re.compile(f"^/agents/sessions/{_SESSION}/turns/{_TURN}$"),
             lambda p, q, c: e.get_turn(p["session_id"], p["turn_id"])),
        ]

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: Any, corrupt: Corrupt) -> JSON:
        for pattern, fn in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            if method != "GET":
                raise ApiError(405, f"Method {method} not allowed on {path[:200]}.")
            if BETA not in (headers.get("OpenAI-Beta") or "").replace(" ", ""):
                raise ApiError(400, "You must provide the 'OpenAI-Beta' header to access the Agents API. "
                               f"Please try again by setting the header 'OpenAI-Beta: {BETA}'.", code="invalid_beta")
            return fn(match.groupdict(), query, corrupt)
        raise ApiError(404, f"Invalid URL ({method} {path[:200]})")

    def _list_sessions(self, params: dict[str, str], query: dict[str, list[str]], corrupt: Corrupt) -> JSON:
        metadata = {k[9:-1]: v[-1] for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}
        agent = query.get("agent_id")
        data, has_more = self.engine.list_sessions(
            limit=self._limit(_arg(query, "limit")), order=self._order(_arg(query, "order")),
            after=_arg(query, "after"), agent_id=agent[-1] if agent else None, metadata=metadata)
        page = list_page(data, has_more)  # cursors from the real items, before any fault corrupts one
        page["data"] = corrupt(data)
        return page

    def _list_turns(self, params: dict[str, str], query: dict[str, list[str]], corrupt: Corrupt) -> JSON:
        data, has_more = self.engine.list_turns(
            params["session_id"], limit=self._limit(_arg(query, "limit")), order=self._order(_arg(query, "order")),
            after=_arg(query, "after"))
        page = list_page(data, has_more)  # cursors from the real items, before any fault corrupts one
        page["data"] = corrupt(data)
        return page


def _arg(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None
