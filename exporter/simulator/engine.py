"""The lifecycle engine: every run's ground truth, evolving lazily with the clock.

Each run follows a plan of (status, seconds) stints fixed when it is created, so its state at any time is a
pure function of the plan and the clock. The engine catches up to `clock.now()` on every call, which makes
the result independent of how often it is asked: with a FakeClock a seed gives the same runs every time.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.clock import Clock
from exporter.simulator.scenarios import OUTCOMES, Phase, Scenario
from exporter.simulator.wire import (
    JSON,
    ApiError,
    Run,
    list_page,
    render_run,
    render_steps,
    render_thread,
    tool_calls_for,
)
from exporter.statuses import API_STATUSES, TERMINAL

EXPIRY_SECONDS = 600.0  # the API expires a run 10 minutes after creation
MAX_RUNS_PER_THREAD = 5000
ERROR_CODES: tuple[str, ...] = ("server_error", "rate_limit_exceeded", "invalid_prompt")
# content_filter: Foundry's incomplete_details.reason when its content filter stops a run.
INCOMPLETE_REASONS: tuple[str, ...] = ("max_completion_tokens", "max_prompt_tokens", "content_filter")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_END_FIELD = {"completed": "completed_at", "incomplete": "completed_at", "failed": "failed_at"}

Plan = list[tuple[str, float]]


@dataclass(frozen=True)
class Truth:
    """What really happened, for comparing an exporter's numbers against."""

    now: int
    by_status: dict[str, int]  # current status of every run the API still lists
    finished: dict[str, int]  # terminal status -> runs that ended (at or after `since`)
    error_codes: dict[str, int]
    incomplete_reasons: dict[str, int]
    tokens: dict[str, int]  # {"prompt": .., "completion": ..} over those finished runs
    queued_seconds: list[int]  # started_at - created_at of runs that started (at or after `since`)
    since: int | None = None
    # Seconds queued of runs that left the queue without starting (cancelled while queued), at or after `since`.
    queued_unstarted: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Record:
    """The truth-relevant part of a run the API no longer lists (evicted or on a deleted thread)."""

    status: str
    ended_at: int | None
    started_at: int | None
    queued: int | None
    unstarted: tuple[float, float] | None  # (left the queue at, seconds queued) of a run that never started
    error_code: str | None
    incomplete_reason: str | None
    prompt: int
    completion: int


@dataclass
class _Thread:
    id: str
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)
    order: list[tuple[int, str]] = field(default_factory=list)  # (created_at, id), ascending
    runs: dict[str, Run] = field(default_factory=dict)


def _rand_id(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choice(_ID_ALPHABET) for _ in range(24))


def _record(run: Run) -> _Record:
    prompt, completion = run.usage()
    queued = None if run.started_at is None else run.started_at - run.created_at
    unstarted = None
    if run.started_at is None and len(run.history) > 1 and run.history[0][0] == "queued":
        unstarted = (run.history[1][1], run.history[1][1] - run.history[0][1])
    return _Record(
        run.status,
        run.ended_at,
        run.started_at,
        queued,
        unstarted,
        run.error_code if run.status == "failed" else None,
        run.incomplete_reason if run.status == "incomplete" else None,
        prompt,
        completion,
    )


def _slice_page(
    keys: list[tuple[int, str]], start: int, end: int, limit: int, backwards: bool
) -> tuple[list[tuple[int, str]], bool]:
    """The keys of one page between two cursor positions, and whether more follow in the paging direction."""
    if backwards:  # paging backwards: the `limit` items just before the cursor
        lo = max(start, end - limit)
        return keys[lo:end], lo > start
    hi = min(end, start + limit) if start < end else start
    return keys[start:hi], hi < end


def validate_plan(plan: Sequence[tuple[str, float]]) -> Plan:
    """Check a scripted plan: known statuses, non-terminal stints then exactly one terminal one."""
    out: Plan = []
    if not plan:
        raise ValueError("a plan needs at least one stint")
    for i, (status, seconds) in enumerate(plan):
        last = i == len(plan) - 1
        if status not in API_STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if (status in TERMINAL) != last:
            raise ValueError("a plan is non-terminal stints followed by one terminal status")
        if math.isnan(seconds) or seconds < 0 or (math.isinf(seconds) and status != "requires_action"):
            raise ValueError(f"bad duration {seconds!r} for {status}")
        prev = plan[i - 1][0] if i else None
        if status == "expired" and prev != "requires_action":
            raise ValueError("only a run in requires_action can expire")
        if status == "cancelled" and prev != "cancelling":
            raise ValueError("cancelled must follow cancelling")
        if prev == "cancelling" and status != "cancelled":
            raise ValueError("cancelling can only lead to cancelled")
        out.append((status, float(seconds)))
    if out[0][0] not in ("queued", "in_progress"):
        raise ValueError("a run starts queued or in_progress")
    return out


class Engine:
    """Runs, threads and the scenario's workload. All public methods are thread-safe."""

    def __init__(self, scenario: Scenario, seed: int, clock: Clock, speed: float = 1.0) -> None:
        if speed <= 0 or not math.isfinite(speed):
            raise ValueError("speed must be a positive number")
        self.scenario = scenario
        self.seed = seed
        self.clock = clock
        self.speed = speed
        self.max_runs_per_thread = MAX_RUNS_PER_THREAD
        self._lock = threading.RLock()
        # Separate RNGs so that API calls never perturb the scenario's own workload.
        self._setup_rng = random.Random(f"{seed}:setup")
        self._work_rng = random.Random(f"{seed}:workload")
        self._api_rng = random.Random(f"{seed}:api")
        self._t0 = clock.now()
        self._now = self._t0
        self._threads: dict[str, _Thread] = {}
        self._thread_order: list[tuple[int, str]] = []  # (created_at, id) of live threads, ascending
        self._scenario_threads: list[str] = []
        self._deleted: set[str] = set()
        self._active: dict[str, Run] = {}
        self._archive: list[_Record] = []
        self._workers: list[float] = [self._t0] * (scenario.workers or 0)
        self._workload_enabled = True
        for _ in range(scenario.threads):
            tid = self._new_thread(self._setup_rng, int(self._t0 - scenario.history_span))
            self._scenario_threads.append(tid)
        self._seed_history()
        self._next_arrival: float | None = self._t0 + self._gap(self._work_rng, self._t0)

    # ----- scenario time -----------------------------------------------------------------------

    @property
    def expiry_window(self) -> float:
        return EXPIRY_SECONDS / self.speed

    def _phase(self, t: float) -> Phase:
        phases = self.scenario.phases
        elapsed = max(0.0, (t - self._t0) * self.speed)
        total = sum(p.duration or 0.0 for p in phases)
        if self.scenario.cycle and total > 0:
            elapsed %= total
        for phase in phases:
            if phase.duration is None or elapsed < phase.duration:
                return phase
            elapsed -= phase.duration
        return phases[-1]

    def _gap(self, rng: random.Random, t: float) -> float:
        rate = self._phase(t).arrival_rate
        if rate <= 0:
            return 1.0 / self.speed  # look again a (scaled) second later
        return rng.expovariate(rate) / self.speed

    # ----- plans ---------------------------------------------------------------------------------

    def _scenario_run(self, rng: random.Random, t: float, thread_id: str) -> Run:
        """A run as the scenario's lifecycle model makes it, created at time t."""
        s = self.scenario
        k = 1.0 / self.speed
        outcome = rng.choices(OUTCOMES, weights=self._phase(t).outcomes.weights())[0]
        assistant_id, model = rng.choice(s.assistants)

        def work() -> float:
            return max(0.3, rng.expovariate(1.0 / s.work_mean)) * k

        def pause() -> float:
            # Always well inside the expiry window, so only "expired" runs expire.
            return min(max(0.3, rng.expovariate(1.0 / s.tool_pause_mean)), 0.25 * EXPIRY_SECONDS) * k

        plan: Plan = [("queued", max(0.2, rng.expovariate(1.0 / s.queue_mean)) * k)]
        pauses = 0
        while pauses < 3 and rng.random() < s.tool_call_probability:
            pauses += 1
        if outcome == "cancelled" and rng.random() < 0.3:
            plan += [("cancelling", 1.0 * k), ("cancelled", 0.0)]  # cancelled while still queued
        else:
            plan.append(("in_progress", work()))
            for _ in range(pauses):
                plan += [("requires_action", pause()), ("in_progress", work())]
            if outcome == "expired":
                plan += [("requires_action", math.inf), ("expired", 0.0)]
            elif outcome == "cancelled":
                plan += [("cancelling", 1.0 * k), ("cancelled", 0.0)]
            else:
                plan.append((outcome, 0.0))
        run = Run(
            id=_rand_id(rng, "run_"),
            thread_id=thread_id,
            assistant_id=assistant_id,
            model=model,
            created_at=int(t),
            expires_at=int(t) + max(1, round(self.expiry_window)),
            plan=plan,
            prompt_tokens=rng.randint(150, 4000),
            completion_tokens=rng.randint(10, 1200),
        )
        if outcome == "failed":
            run.error_code = rng.choices(ERROR_CODES, weights=(0.6, 0.3, 0.1))[0]
        if outcome == "incomplete":
            reasons, weights = zip(*s.incomplete_reasons, strict=True)
            run.incomplete_reason = rng.choices(reasons, weights=weights)[0]
            if run.incomplete_reason == "max_completion_tokens":
                run.max_completion_tokens = run.completion_tokens = 512
            else:
                run.max_prompt_tokens = run.prompt_tokens = 2048
        return run

    def _apply_capacity(self, run: Run, t: float) -> None:
        """With finite workers, a run stays queued until one is free (first come, first served)."""
        if not self._workers:
            return
        free_at = heapq.heappop(self._workers)
        queued = max(run.plan[0][1], free_at - t)
        busy = sum(d for status, d in run.plan[1:] if status not in TERMINAL and math.isfinite(d))
        run.plan[0] = ("queued", queued)
        heapq.heappush(self._workers, t + queued + busy)

    # ----- transitions ---------------------------------------------------------------------------

    def _enter(self, run: Run, idx: int, t: float) -> None:
        run.idx = idx
        run.stint_start = t
        status = run.plan[idx][0]
        run.status = status
        run.history.append((status, t))
        stamp = int(t)
        if status == "in_progress" and run.started_at is None:
            run.started_at = stamp
        if status == "requires_action":
            run.action_count += 1
            run.tool_calls = tool_calls_for(run)
        else:
            run.tool_calls = None
        if status in TERMINAL:
            run.ended_at = stamp
            if status in _END_FIELD:
                setattr(run, _END_FIELD[status], stamp)
            elif status == "cancelled":
                run.cancelled_at = stamp
            self._active.pop(run.id, None)

    def _advance_run(self, run: Run, now: float) -> None:
        while not run.terminal:
            status, seconds = run.plan[run.idx]
            end = run.stint_start + seconds
            if status == "requires_action" and (run.plan[run.idx + 1][0] == "expired" or end > run.expires_at):
                # Nobody submitted tool outputs before expires_at.
                end = max(run.stint_start, float(run.expires_at))
                if run.plan[run.idx + 1][0] != "expired":
                    run.plan = [*run.plan[: run.idx + 1], ("expired", 0.0)]
            if end > now:
                return
            self._enter(run, run.idx + 1, end)

    def _add_run(self, run: Run, t: float) -> None:
        thread = self._threads[run.thread_id]
        thread.runs[run.id] = run
        bisect.insort(thread.order, (run.created_at, run.id))
        self._active[run.id] = run
        self._enter(run, 0, t)

    def _advance(self) -> float:
        now = max(self._now, self.clock.now())  # time never goes backwards for the engine
        self._now = now
        while self._workload_enabled and self._next_arrival is not None and self._next_arrival <= now:
            t = self._next_arrival
            self._arrive(t)
            self._next_arrival = t + self._gap(self._work_rng, t)
        for run in list(self._active.values()):
            self._advance_run(run, now)
        self._evict()
        return now

    def _arrive(self, t: float) -> None:
        rng = self._work_rng
        if self.scenario.new_thread_probability > 0 and rng.random() < self.scenario.new_thread_probability:
            self._scenario_threads.append(self._new_thread(rng, int(t)))
        candidates = [tid for tid in self._scenario_threads if tid not in self._deleted]
        candidates = candidates[-self.scenario.threads :] if self.scenario.threads > 0 else candidates
        tid = rng.choice(candidates) if candidates else None
        run = self._scenario_run(rng, t, tid or "")
        if tid is None:
            return
        self._apply_capacity(run, t)
        self._add_run(run, t)

    def _evict(self) -> None:
        """Keep memory bounded: drop the oldest terminal runs of a thread beyond the cap."""
        for thread in self._threads.values():
            excess = len(thread.order) - self.max_runs_per_thread
            if excess <= 0:
                continue
            keep: list[tuple[int, str]] = []
            for key in thread.order:
                run = thread.runs[key[1]]
                if excess > 0 and run.terminal:
                    excess -= 1
                    self._archive.append(_record(run))
                    del thread.runs[key[1]]
                else:
                    keep.append(key)
            thread.order = keep

    def _seed_history(self) -> None:
        """Old terminal runs, created over `history_span` seconds before the start."""
        s = self.scenario
        rng = self._setup_rng
        end = self._t0 - max(3600.0, 2 * self.expiry_window)
        for tid in self._scenario_threads[: s.history_threads]:
            times = sorted(rng.uniform(self._t0 - s.history_span, end) for _ in range(s.history_runs))
            for t in times:
                run = self._scenario_run(rng, t, tid)
                self._add_run(run, t)
                self._advance_run(run, self._t0)

    # ----- threads -------------------------------------------------------------------------------

    def _new_thread(self, rng: random.Random, created_at: int, metadata: dict[str, str] | None = None) -> str:
        tid = _rand_id(rng, "thread_")
        self._threads[tid] = _Thread(tid, created_at, dict(metadata or {}))
        bisect.insort(self._thread_order, (created_at, tid))
        return tid

    def _thread(self, thread_id: str) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None:
            raise ApiError(404, f"No thread found with id '{thread_id}'.")
        return thread

    def _run(self, thread_id: str, run_id: str) -> Run:
        run = self._thread(thread_id).runs.get(run_id)
        if run is None:
            raise ApiError(404, f"No run found with id '{run_id}'.")
        return run

    # ----- public: ground truth and control ------------------------------------------------------

    def now(self) -> float:
        with self._lock:
            return self._advance()

    def thread_ids(self) -> list[str]:
        """The scenario's own threads that still exist (catching up first: a scenario may open threads)."""
        with self._lock:
            self._advance()
            return [tid for tid in self._scenario_threads if tid not in self._deleted]

    def runs(self) -> list[JSON]:
        """Every run the API lists, as the API would return it, thread by thread, oldest first."""
        with self._lock:
            self._advance()
            return [render_run(t.runs[key[1]]) for t in self._threads.values() for key in t.order]

    def history(self, run_id: str) -> list[tuple[str, float]]:
        """The (status, epoch seconds) transitions of a run so far; [] for an unknown run."""
        with self._lock:
            self._advance()
            for thread in self._threads.values():
                if run_id in thread.runs:
                    return list(thread.runs[run_id].history)
            return []

    def truth(self, since: int | None = None) -> Truth:
        with self._lock:
            now = self._advance()
            live = [run for t in self._threads.values() for run in t.runs.values()]
            by_status = Counter(run.status for run in live)
            records = [*self._archive, *(_record(run) for run in live)]
            finished: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            tokens = {"prompt": 0, "completion": 0}
            queued: list[int] = []
            unstarted: list[float] = []
            for rec in records:
                if rec.queued is not None and rec.started_at is not None and (since is None or rec.started_at >= since):
                    queued.append(rec.queued)
                if rec.unstarted is not None and (since is None or rec.unstarted[0] >= since):
                    unstarted.append(rec.unstarted[1])
                if rec.status not in TERMINAL or rec.ended_at is None:
                    continue
                if since is not None and rec.ended_at < since:
                    continue
                finished[rec.status] += 1
                if rec.error_code:
                    errors[rec.error_code] += 1
                if rec.incomplete_reason:
                    reasons[rec.incomplete_reason] += 1
                tokens["prompt"] += rec.prompt
                tokens["completion"] += rec.completion
            return Truth(
                now=int(now),
                by_status=dict(by_status),
                finished=dict(finished),
                error_codes=dict(errors),
                incomplete_reasons=dict(reasons),
                tokens=tokens,
                queued_seconds=sorted(queued),
                since=since,
                queued_unstarted=sorted(unstarted),
            )

    def set_workload(self, enabled: bool) -> None:
        """Pause or resume the scenario's own arrivals (runs already going carry on)."""
        with self._lock:
            now = self._advance()
            if enabled and not self._workload_enabled:
                self._next_arrival = now + self._gap(self._work_rng, now)
            elif not enabled:
                self._next_arrival = None
            self._workload_enabled = enabled

    def create_thread(self, metadata: dict[str, str] | None = None) -> str:
        with self._lock:
            now = self._advance()
            return self._new_thread(self._api_rng, int(now), metadata)

    def delete_thread(self, thread_id: str) -> None:
        """The thread and its runs disappear (404 from now on); finished runs stay in the truth."""
        with self._lock:
            self._advance()
            thread = self._thread(thread_id)
            for run in thread.runs.values():
                self._active.pop(run.id, None)
                self._archive.append(_record(run))
            del self._threads[thread_id]
            self._thread_order.remove((thread.created_at, thread_id))
            self._deleted.add(thread_id)

    def create_run(
        self,
        thread_id: str,
        plan: Sequence[tuple[str, float]] | None = None,
        *,
        assistant_id: str = "asst_scripted",
        model: str = "gpt-4o",
        error_code: str | None = None,
        incomplete_reason: str | None = None,
        prompt_tokens: int = 100,
        completion_tokens: int = 50,
        expires_in: float | None = None,
    ) -> str:
        """A scripted run whose stints last exactly the given seconds (not divided by speed).

        Without a plan, the run follows the scenario's lifecycle model like one created through the API.
        """
        with self._lock:
            now = self._advance()
            thread = self._thread(thread_id)
            if plan is None:
                return self._model_run(thread, now, assistant_id, model).id
            stints = validate_plan(plan)
            if error_code is not None and error_code not in ERROR_CODES:
                raise ValueError(f"error_code must be one of {ERROR_CODES}")
            if incomplete_reason is not None and incomplete_reason not in INCOMPLETE_REASONS:
                raise ValueError(f"incomplete_reason must be one of {INCOMPLETE_REASONS}")
            window = self.expiry_window if expires_in is None else expires_in
            run = Run(
                id=_rand_id(self._api_rng, "run_"),
                thread_id=thread.id,
                assistant_id=assistant_id,
                model=model,
                created_at=int(now),
                expires_at=int(now) + max(1, round(window)),
                plan=stints,
                error_code=error_code or "server_error",
                incomplete_reason=incomplete_reason or "max_completion_tokens",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            self._add_run(run, now)
            self._advance_run(run, now)
            return run.id

    def _model_run(self, thread: _Thread, now: float, assistant_id: str, model: str | None) -> Run:
        run = self._scenario_run(self._api_rng, now, thread.id)
        run.assistant_id = assistant_id
        if model:
            run.model = model
        else:
            run.model = dict(self.scenario.assistants).get(assistant_id, run.model)
        self._apply_capacity(run, now)
        self._add_run(run, now)
        self._advance_run(run, now)
        return run

    # ----- public: the API's operations (raise ApiError) -----------------------------------------

    def api_create_thread(self, metadata: dict[str, str] | None = None) -> JSON:
        with self._lock:
            tid = self.create_thread(metadata)
            thread = self._threads[tid]
            return render_thread(tid, thread.created_at, thread.metadata)

    def api_get_thread(self, thread_id: str) -> JSON:
        with self._lock:
            self._advance()
            thread = self._thread(thread_id)
            return render_thread(thread.id, thread.created_at, thread.metadata)

    def api_delete_thread(self, thread_id: str) -> JSON:
        with self._lock:
            self.delete_thread(thread_id)
            return {"id": thread_id, "object": "thread.deleted", "deleted": True}

    def list_runs(
        self, thread_id: str, *, limit: int, order: str, after: str | None, before: str | None
    ) -> tuple[JSON, list[JSON]]:
        """A list page (first_id/last_id computed) and its data, which a fault may still corrupt."""
        with self._lock:
            self._advance()
            thread = self._thread(thread_id)
            keys = thread.order if order == "asc" else thread.order[::-1]
            start, end = 0, len(keys)
            if after is not None:
                start = self._cursor_index(thread, keys, order, after, "after") + 1
            if before is not None:
                end = self._cursor_index(thread, keys, order, before, "before")
            chosen, has_more = _slice_page(keys, start, end, limit, backwards=before is not None and after is None)
            data = [render_run(thread.runs[key[1]]) for key in chosen]
            return list_page(data, has_more), data

    def list_threads(self, *, limit: int, order: str, after: str | None, before: str | None) -> tuple[list[JSON], bool]:
        """One page of threads by created_at (ties by id) and whether more follow (Foundry's GET /threads)."""
        with self._lock:
            self._advance()
            keys = self._thread_order if order == "asc" else self._thread_order[::-1]
            start, end = 0, len(keys)
            if after is not None:
                start = self._thread_cursor_index(keys, order, after, "after") + 1
            if before is not None:
                end = self._thread_cursor_index(keys, order, before, "before")
            chosen, has_more = _slice_page(keys, start, end, limit, backwards=before is not None and after is None)
            data = [render_thread(tid, created, self._threads[tid].metadata) for created, tid in chosen]
            return data, has_more

    def _thread_cursor_index(self, keys: list[tuple[int, str]], order: str, cursor: str, name: str) -> int:
        thread = self._threads.get(cursor)
        if thread is None:
            raise ApiError(400, f"Invalid '{name}': no thread with id '{cursor}'.", param=name)
        i = bisect.bisect_left(self._thread_order, (thread.created_at, thread.id))
        return i if order == "asc" else len(keys) - 1 - i

    @staticmethod
    def _cursor_index(thread: _Thread, keys: list[tuple[int, str]], order: str, cursor: str, name: str) -> int:
        run = thread.runs.get(cursor)
        if run is None:
            raise ApiError(400, f"Invalid '{name}': no run with id '{cursor}' in this thread.", param=name)
        i = bisect.bisect_left(thread.order, (run.created_at, run.id))
        return i if order == "asc" else len(keys) - 1 - i

    def get_run(self, thread_id: str, run_id: str) -> JSON:
        with self._lock:
            self._advance()
            return render_run(self._run(thread_id, run_id))

    def list_steps(self, thread_id: str, run_id: str, *, limit: int, order: str) -> JSON:
        with self._lock:
            self._advance()
            steps = render_steps(self._run(thread_id, run_id))
            steps = steps if order == "asc" else steps[::-1]
            return list_page(steps[:limit], len(steps) > limit)

    def api_create_run(self, thread_id: str, body: dict[str, Any]) -> JSON:
        with self._lock:
            now = self._advance()
            thread = self._thread(thread_id)
            assistant_id = body.get("assistant_id")
            if not isinstance(assistant_id, str) or not assistant_id:
                raise ApiError(
                    400,
                    "Missing required parameter: 'assistant_id'.",
                    param="assistant_id",
                    code="missing_required_parameter",
                )
            model = body.get("model")
            if model is not None and not isinstance(model, str):
                raise ApiError(400, "Invalid type for 'model': expected a string.", param="model")
            return render_run(self._model_run(thread, now, assistant_id, model))

    def cancel_run(self, thread_id: str, run_id: str) -> JSON:
        with self._lock:
            now = self._advance()
            run = self._run(thread_id, run_id)
            if run.terminal:
                raise ApiError(400, f"Cannot cancel run with status '{run.status}'.")
            if run.status != "cancelling":
                run.plan = [*run.plan[: run.idx + 1], ("cancelling", 1.0 / self.speed), ("cancelled", 0.0)]
                self._enter(run, run.idx + 1, now)
            return render_run(run)

    def submit_tool_outputs(self, thread_id: str, run_id: str, body: dict[str, Any]) -> JSON:
        with self._lock:
            now = self._advance()
            run = self._run(thread_id, run_id)
            if run.status != "requires_action" or run.tool_calls is None:
                raise ApiError(400, f'Runs in status "{run.status}" do not accept tool outputs.')
            outputs = body.get("tool_outputs")
            if not isinstance(outputs, list):
                raise ApiError(
                    400,
                    "Missing required parameter: 'tool_outputs'.",
                    param="tool_outputs",
                    code="missing_required_parameter",
                )
            given = {o.get("tool_call_id") for o in outputs if isinstance(o, dict)}
            expected = {c["id"] for c in run.tool_calls}
            if not expected <= given:
                raise ApiError(
                    400,
                    f"Expected tool outputs for call_ids {sorted(expected)}, got {sorted(map(str, given))}",
                    param="tool_outputs",
                )
            rest = run.plan[run.idx + 1 :]
            if rest[0][0] == "expired":
                # The scenario meant nobody to answer; somebody did, so the run finishes normally.
                rest = [("in_progress", self.scenario.work_mean / self.speed), ("completed", 0.0)]
            elif rest[0][0] != "in_progress":
                rest = [("in_progress", 0.0), *rest]
            run.plan = [*run.plan[: run.idx + 1], *rest]
            self._enter(run, run.idx + 1, now)
            self._advance_run(run, now)
            return render_run(run)
