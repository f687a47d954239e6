"""The LangGraph Agent Server side of the simulator (`--flavor langgraph`): threads and their runs, in the shapes,
order and paging of `langgraph dev` (langgraph-api 0.16), checked against it by tests/test_simulator_langgraph.py.

Served at the root, as the real server: `GET /ok`, `POST /threads`, `GET /threads/{id}`, `POST /threads/search`
(limit 0..1000, offset, sort_by, sort_order, select, metadata, status; most recently updated first by default),
`POST /threads/{id}/runs`, `GET /threads/{id}/runs` (limit, default 10; offset; status; select, repeatable;
newest first), `GET /threads/{id}/runs/{run_id}` and `POST /threads/{id}/runs/{run_id}/cancel` (202, no body;
action=rollback deletes the run). Errors are `{"detail": ...}`. Thread ids must be UUIDs (else 422).

Like runs of the other flavours, a run follows a plan fixed when it is created: `pending`, `running`, then its
end; its state is a pure function of the plan, a cancel and the clock. `updated_at` moves when the run is
created and when it ends, not when it starts (as on the real server). The graph names of
tests/fixtures/langgraph pick the ending of runs created over the API: work and ask succeed, fail errors,
slow times out; a workload (for --demo) adds runs to a few threads with a mix of endings.
"""

from __future__ import annotations

import json
import random
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from exporter.simulator.clock import Clock
from exporter.simulator.wire import ApiError

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")  # the server's default assistants: uuid5
RUN_FIELDS = ("run_id", "thread_id", "assistant_id", "metadata", "status", "kwargs", "multitask_strategy",
              "created_at", "updated_at", "langsmith_session_name")
THREAD_FIELDS = ("thread_id", "created_at", "updated_at", "state_updated_at", "metadata", "status", "config",
                 "values")
THREAD_SORTS = ("thread_id", "status", "created_at", "updated_at", "state_updated_at")
# The graphs of tests/fixtures/langgraph: how long a run of each works (seconds at speed 1) and how it ends.
GRAPHS: dict[str, tuple[float, str]] = {"work": (0.2, "success"), "ask": (0.2, "success"),
                                        "fail": (0.2, "error"), "slow": (3.0, "timeout")}
WORKLOAD_ENDINGS = (("success", 0.75), ("error", 0.12), ("timeout", 0.05), ("interrupted", 0.08))
Corrupt = Callable[[list[Any]], list[Any]]
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


class LangGraphError(ApiError):
    """An error in the server's shape: {"detail": message}."""

    def body(self) -> dict[str, Any]:
        return {"detail": self.message}


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


@dataclass
class SimRun:
    run_id: str
    thread_id: str
    graph: str
    created: float
    plan: list[tuple[str, float]]  # (pending, s), (running, s), (ending, 0): seconds of the simulator's clock
    input: Any = None
    strategy: str = "enqueue"
    cancelled: float | None = None  # a cancel request, effective if it came before the run ended

    @property
    def assistant_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE_GRAPH, self.graph))

    def state(self, now: float) -> tuple[str, float]:
        """(status, updated_at) at `now`."""
        at = self.created
        for status, seconds in self.plan:
            end = at + seconds
            if self.cancelled is not None and self.cancelled <= min(end, now) and status in ("pending", "running"):
                return "interrupted", self.cancelled
            if now < end or seconds == 0:
                return status, (at if seconds == 0 else self.created)
            at = end
        return self.plan[-1][0], at

    def body(self, now: float) -> dict[str, Any]:
        status, updated = self.state(now)
        metadata = {"created_by": "system", "graph_id": self.graph, "assistant_id": self.assistant_id}
        configurable = {"run_id": self.run_id, "thread_id": self.thread_id, "graph_id": self.graph,
                        "assistant_id": self.assistant_id, "user_id": ""}
        kwargs = {"input": self.input, "command": None, "config": {"configurable": configurable, "metadata": metadata},
                  "context": {}, "stream_mode": ["values"], "interrupt_before": None, "interrupt_after": None,
                  "webhook": None, "feedback_keys": None, "temporary": False, "subgraphs": False, "resumable": False,
                  "checkpoint_during": True, "durability": "async"}
        values = (self.run_id, self.thread_id, self.assistant_id, metadata, status, kwargs, self.strategy,
                  iso(self.created), iso(updated), None)
        return dict(zip(RUN_FIELDS, values, strict=True))


@dataclass
class SimThread:
    thread_id: str
    created: float
    metadata: dict[str, Any] = field(default_factory=dict)
    runs: list[SimRun] = field(default_factory=list)  # oldest first

    def updated(self, now: float) -> float:
        return max([self.created, *(t for r in self.runs for t in (r.created, r.state(now)[1]))])

    def body(self, now: float) -> dict[str, Any]:
        statuses = [r.state(now)[0] for r in self.runs]
        busy = any(s in ("pending", "running") for s in statuses)
        status = "busy" if busy else "error" if statuses and statuses[-1] in ("error", "timeout") else "idle"
        config: dict[str, Any] = {"configurable": {}} if self.runs else {}
        values = (self.thread_id, iso(self.created), iso(self.updated(now)), iso(self.created), self.metadata,
                  status, config, None)
        body = dict(zip(THREAD_FIELDS, values, strict=True))
        ended = [s for s in statuses if s in ("success", "error", "timeout")]
        if ended:  # a run that ended with a checkpoint adds these two (one that was interrupted does not)
            error = {"error": "TimeoutError" if ended[-1] == "timeout" else "RuntimeError", "message": ""}
            body.update(error=error if ended[-1] != "success" else None, interrupts={})
        return body


class LangGraphEngine:
    """Threads and runs on the simulator's clock; thread-safe. A workload adds runs at `rate` per second (at
    speed 1) to the first `threads` threads, now and then to a new one."""

    def __init__(self, clock: Clock, seed: int = 0, speed: float = 1.0, *, threads: int = 6, rate: float = 0.5,
                 workload: bool = False) -> None:
        self.clock = clock
        self.speed = speed
        self.rng = random.Random(seed)
        self.rate = rate
        self.workload = workload
        self.threads: dict[str, SimThread] = {}
        self.listed: Counter[str] = Counter()  # run listings answered, by thread (tests wait for a sweep on it)
        self._lock = threading.Lock()
        self._next_arrival = clock.now()
        for _ in range(threads):
            self.create_thread()

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def now(self) -> float:
        """The clock, after the workload's arrivals up to it."""
        now = self.clock.now()
        with self._lock:
            while self.workload and self._next_arrival <= now:
                self._arrive(self._next_arrival)
                self._next_arrival += self.rng.expovariate(self.rate * self.speed)
        return now

    def _arrive(self, at: float) -> None:
        ids = list(self.threads)
        if not ids or self.rng.random() < 0.1:
            thread = self._new_thread(at, {})
        else:
            thread = self.threads[ids[self.rng.randrange(min(len(ids), 12))]]
        ending = self.rng.choices([e for e, _ in WORKLOAD_ENDINGS], [w for _, w in WORKLOAD_ENDINGS])[0]
        graph = {"success": "work", "error": "fail", "timeout": "slow", "interrupted": "slow"}[ending]
        run = self._new_run(thread, graph, at, {"seconds": 1}, "enqueue", self.rng.expovariate(1.0),
                            self.rng.expovariate(0.25), ending)
        if ending == "interrupted":
            run.cancelled = at + self.rng.uniform(0.0, 4.0) / self.speed

    def _new_thread(self, at: float, metadata: dict[str, Any]) -> SimThread:
        thread = SimThread(self._id(), at, dict(metadata))
        self.threads[thread.thread_id] = thread
        return thread

    def _new_run(self, thread: SimThread, graph: str, at: float, input: Any, strategy: str, queued: float,
                 works: float, ending: str) -> SimRun:
        plan = [("pending", queued / self.speed), ("running", works / self.speed), (ending, 0.0)]
        run = SimRun(self._id(), thread.thread_id, graph, at, plan, input, strategy)
        thread.runs.append(run)
        thread.metadata.setdefault("graph_id", graph)
        thread.metadata.setdefault("assistant_id", run.assistant_id)
        return run

    # -- what tests and the demo ask ---------------------------------------------------------------------

    def create_thread(self, metadata: dict[str, Any] | None = None) -> str:
        with self._lock:
            return self._new_thread(self.clock.now(), metadata or {}).thread_id

    def set_workload(self, enabled: bool) -> None:
        """Pause or resume the workload's arrivals from now on (runs already going carry on; arrivals due but not
        made yet are dropped, so a simulator paused at once after its start has no runs)."""
        with self._lock:
            if enabled and not self.workload:
                self._next_arrival = self.clock.now()
            self.workload = enabled

    def create_run(self, thread_id: str, graph: str = "work") -> str:
        """A run of one of GRAPHS on a thread, as POST /threads/{id}/runs makes it; its id."""
        with self._lock:
            return self._create_run(self.threads[thread_id], {"assistant_id": graph}, self.clock.now()).run_id

    def thread_ids(self) -> list[str]:
        with self._lock:
            return list(self.threads)

    def truth(self) -> Counter[str]:
        """Runs by status now."""
        now = self.now()
        with self._lock:
            return Counter(r.state(now)[0] for t in self.threads.values() for r in t.runs)

    # -- the API ----------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, raw_body: bytes, corrupt: Corrupt) -> tuple[int, Any]:
        """(status, body) of one request; body None: no content."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        segments = path.strip("/").split("/")
        now = self.now()
        with self._lock:
            if path == "/ok" and method == "GET":
                return 200, {"ok": True}
            if segments[0] != "threads":
                raise LangGraphError(404, "Not Found")
            if len(segments) == 1 and method == "POST":
                body = _json(raw_body)
                return 200, self._new_thread(now, _dict(body.get("metadata"))).body(now)
            if segments[1:] == ["search"] and method == "POST":
                return 200, corrupt(self._search(_json(raw_body), now))
            thread = self._thread(segments[1])
            return self._thread_route(method, thread, segments[2:], query, raw_body, now, corrupt)

    def _thread(self, thread_id: str) -> SimThread:
        if not _UUID.fullmatch(thread_id):
            raise LangGraphError(422, "Invalid thread ID: must be a UUID")
        thread = self.threads.get(str(uuid.UUID(thread_id)))
        if thread is None:
            raise LangGraphError(404, f"Thread with ID {thread_id} not found")
        return thread

    def _thread_route(self, method: str, thread: SimThread, rest: list[str], query: dict[str, list[str]],
                      raw_body: bytes, now: float, corrupt: Corrupt) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, thread.body(now)
        if rest == ["runs"] and method == "GET":
            return 200, corrupt(self._list_runs(thread, query, now))
        if rest == ["runs"] and method == "POST":
            return 200, self._create_run(thread, _json(raw_body), now).body(now)
        run = next((r for r in thread.runs if len(rest) >= 2 and r.run_id == rest[1]), None)
        if run is None or rest[0] != "runs" or len(rest) > 3:
            raise LangGraphError(404, "Run not found" if rest[:1] == ["runs"] else "Not Found")
        if len(rest) == 2 and method == "GET":
            return 200, run.body(now)
        if rest[2:] == ["cancel"] and method == "POST":
            status, _ = run.state(now)
            if status not in ("pending", "running"):
                raise LangGraphError(404, "Run not found")  # as the real server says of a finished run
            if (query.get("action") or ["interrupt"])[-1] == "rollback":
                thread.runs.remove(run)
            else:
                run.cancelled = now
            return 202, None
        raise LangGraphError(405, "Method Not Allowed")

    def _create_run(self, thread: SimThread, body: dict[str, Any], now: float) -> SimRun:
        graph = body.get("assistant_id")
        if graph not in GRAPHS:
            graph = next((g for g in GRAPHS if str(uuid.uuid5(NAMESPACE_GRAPH, g)) == graph), None)
        if graph is None:
            raise LangGraphError(404, f"Assistant '{str(body.get('assistant_id'))[:80]}' not found")
        works, ending = GRAPHS[graph]
        data = body.get("input")
        seconds = data.get("seconds") if isinstance(data, dict) else None
        if graph != "slow" and isinstance(seconds, int | float) and not isinstance(seconds, bool) and (
                0 <= seconds <= 60):
            works = float(seconds)  # a slow run always meets the server's run timeout first
        strategy = body.get("multitask_strategy") if isinstance(body.get("multitask_strategy"), str) else "enqueue"
        if strategy == "interrupt":
            for other in thread.runs:
                if other.state(now)[0] in ("pending", "running"):
                    other.cancelled = now
        return self._new_run(thread, str(graph), now, data, str(strategy), 0.5, works, ending)

    def _list_runs(self, thread: SimThread, query: dict[str, list[str]], now: float) -> list[Any]:
        limit, offset = _int(query, "limit", 10), _int(query, "offset", 0)
        self.listed[thread.thread_id] += 1
        select = _select(query.get("select") or [], RUN_FIELDS)
        status = query["status"][-1] if query.get("status") else None
        runs = sorted(thread.runs, key=lambda r: r.created, reverse=True)
        bodies = [b for b in (r.body(now) for r in runs) if status is None or b["status"] == status]
        return [_pick(b, select) for b in bodies[max(0, offset):max(0, offset) + max(0, limit)]]

    def _search(self, body: dict[str, Any], now: float) -> list[Any]:
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        if not isinstance(limit, int) or not 0 <= limit <= 1000 or not isinstance(offset, int) or offset < 0:
            raise LangGraphError(422, "limit must be 0..1000 and offset >= 0")
        sort_by, order = body.get("sort_by") or "updated_at", body.get("sort_order") or "desc"
        if sort_by not in THREAD_SORTS or order not in ("asc", "desc"):
            raise LangGraphError(422, f"{str(sort_by)[:40]!r} is not one of {', '.join(THREAD_SORTS)}")
        select = _select(body.get("select") or [], THREAD_FIELDS)
        metadata, status = _dict(body.get("metadata")), body.get("status")
        bodies = [t.body(now) for t in self.threads.values()]
        bodies = [b for b in bodies if all(b["metadata"].get(k) == v for k, v in metadata.items())
                  and (status is None or b["status"] == status)]
        bodies.sort(key=lambda b: b[sort_by], reverse=order == "desc")
        return [_pick(b, select) for b in bodies[offset:offset + limit]]


def _json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise LangGraphError(422, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise LangGraphError(422, "The body must be a JSON object")
    return body


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = (query.get(name) or [str(default)])[-1]
    try:
        return int(raw)
    except ValueError:
        raise LangGraphError(400, f"invalid literal for int() with base 10: {raw[:40]!r}") from None


def _select(select: list[str], allowed: tuple[str, ...]) -> list[str]:
    bad = [s for s in select if s not in allowed]
    if bad:
        raise LangGraphError(422, f"{str(bad[0])[:40]!r} is not one of {', '.join(allowed)}")
    return select


def _pick(body: dict[str, Any], select: list[str]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in select} if select else body
