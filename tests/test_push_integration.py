"""Push and poll together, the real daemon as a subprocess: totals equal the truth, also across `kill -9`.

The exporter runs `--source threads --source push`, polling the simulator's threads, while scripted
clients push to it:
- a *simulator pusher* pushes the RunObjects of those same threads (the runs the exporter also polls), as
  arrays, NDJSON and `thread.run.*` stream events, each state once it is seen, plus a stale earlier state
  after each terminal one;
- *push-only* clients push runs that only they know (assistant `asst_push`, thread `thread_pushonly`, which
  nobody polls): whole lifecycles in every status form (API strings, RunStatus names, integers 0-10, stream
  events, minimal items), with duplicates and shuffled (out-of-order) items, as JSON arrays and NDJSON.
A hand-written request with bad items and one with a bad token come first; `kill -9` hits the exporter while
the clients push, and a client whose request got no answer sends it again after the restart.

How the truth is built: the simulator's `engine.truth(since)` gives the finished runs by status, error
codes, incomplete reasons and tokens of every simulator run that ended after the workload started (all of
them created after the exporter's first sweep, so none is history). The push-only runs' truth is the
script's own: each run has exactly one terminal status (error code, incomplete reason, tokens), whatever
the order and repetition of its items. The truth is the sum of the two, and the exporter's numbers are
compared summed over the `source` label (a run both polled and pushed is one run, under either label).
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from exporter import statuses
from exporter.simulator import Simulator
from exporter.sources.push import ENUM_BY_VALUE
from tests.conftest import ExporterStarter
from tests.exporter_process import Samples, by_label, total
from tests.helpers import wait_until
from tests.simulator_support import quiesce

pytestmark = pytest.mark.slow

FINISHED = "assistants_runs_finished_total"
TOKEN = "push-token-integration-0123456789"
PUSH_ASSISTANT = "asst_push"
PUSH_THREAD = "thread_pushonly"
STATUS_BY_NAME = {name: statuses.ENUM_NAMES[name] for name in ENUM_BY_VALUE}
ENUM_BY_STATUS = {status: name for name, status in STATUS_BY_NAME.items()}
ERROR_CODES = ("server_error", "rate_limit_exceeded", "invalid_prompt")
INCOMPLETE_REASONS = ("max_completion_tokens", "max_prompt_tokens")
_END_FIELD = {"completed": "completed_at", "incomplete": "completed_at", "failed": "failed_at",
              "cancelled": "cancelled_at", "expired": "expires_at"}


# -- the truth of the push-only runs ---------------------------------------------------------------


@dataclass
class PushTruth:
    finished: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    incomplete_reasons: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)

    def add(self, status: str, code: str | None, reason: str | None, prompt: int, completion: int) -> None:
        self.finished[status] += 1
        if code:
            self.error_codes[code] += 1
        if reason:
            self.incomplete_reasons[reason] += 1
        self.tokens["prompt"] += prompt
        self.tokens["completion"] += completion


def _run_object(run_id: str, status: str, created_at: int, **extra: Any) -> dict[str, Any]:
    return {"id": run_id, "object": "thread.run", "thread_id": PUSH_THREAD, "assistant_id": PUSH_ASSISTANT,
            "model": "gpt-push", "status": status, "created_at": created_at, **extra}


def _render(rng: random.Random, run_id: str, status: str, created_at: int, extra: dict[str, Any]) -> object:
    """One state of a run in one of the forms a client may push."""
    form = rng.choice(("api", "enum", "int", "event", "event"))
    if status == statuses.CREATED and form in ("api", "event"):
        form = "enum"  # `created` is a client-side status: no API string or stream event carries it
    if form == "event":
        return {"event": f"thread.run.{status}", "data": _run_object(run_id, status, created_at, **extra)}
    value: object = {"api": status, "enum": ENUM_BY_STATUS[status],
                     "int": ENUM_BY_VALUE.index(ENUM_BY_STATUS[status])}[form]
    return {"id": run_id, "status": value, "thread_id": PUSH_THREAD, "assistant_id": PUSH_ASSISTANT,
            "model": "gpt-push", "created_at": created_at, **extra}


def lifecycle(rng: random.Random, run_id: str, created_at: int, truth: PushTruth) -> list[object]:
    """The items of one push-only run: its states, some repeated, sometimes shuffled. Adds it to the truth."""
    terminal = rng.choice(statuses.TERMINAL_STATUSES)
    path = [rng.choice((statuses.CREATED, statuses.UNKNOWN)), "queued", "in_progress"]
    if rng.random() < 0.3:
        path += ["requires_action", "in_progress"]
    if terminal == "cancelled":
        path.append("cancelling")
    code = rng.choice(ERROR_CODES) if terminal == "failed" else None
    reason = rng.choice(INCOMPLETE_REASONS) if terminal == "incomplete" else None
    prompt, completion = rng.randrange(1, 500), rng.randrange(1, 500)
    end: dict[str, Any] = {"usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion},
                           _END_FIELD[terminal]: created_at + rng.randrange(1, 60)}
    if code:
        end["last_error"] = {"code": code, "message": "scripted"}
    if reason:
        end["incomplete_details"] = {"reason": reason}
    items = [_render(rng, run_id, s, created_at, {}) for s in path]
    if path[0] == statuses.UNKNOWN:
        items[0] = {"id": run_id, "status": 0, "created_at": created_at}  # RunStatus.Null
    items.append(_render(rng, run_id, terminal, created_at, end))
    for _ in range(rng.randrange(3)):
        items.insert(rng.randrange(len(items) + 1), rng.choice(items))  # duplicates anywhere
    if rng.random() < 0.4:
        rng.shuffle(items)  # out of order: a state older than one already seen is stale
    truth.add(terminal, code, reason, prompt, completion)
    return items


# -- clients -----------------------------------------------------------------------------------------


class Target:
    """Where the exporter currently listens; `up` is cleared before a kill and set after the restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.answered_runs = 0  # push-only runs in requests answered 200
        self.unanswered_runs = 0  # push-only runs in requests that got no answer (yet)
        self.unanswered_requests = 0

    def post(self, body: bytes, ndjson: bool, token: str = TOKEN, runs: int = 0) -> httpx.Response:
        """Send until a 200 arrives; a request with no answer is sent again once the exporter is back."""
        ctype = "application/x-ndjson" if ndjson else "application/json"
        unanswered = False
        while True:
            assert self.up.wait(90), "exporter not back in time"
            try:
                answer = httpx.post(self.url + "/api/v1/runs", content=body, timeout=15,
                                    headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code != 503:
                with self.lock:
                    if unanswered:
                        self.unanswered_runs -= runs
                    self.answered_runs += runs
                return answer
            if not unanswered:
                unanswered = True
                with self.lock:
                    self.unanswered_runs += runs
                    self.unanswered_requests += 1
            self.up.wait(1.0)  # a 503 (not committed in time) or no answer: try again shortly


def encode(items: list[object], ndjson: bool) -> bytes:
    if ndjson:
        return b"".join(json.dumps(i).encode() + b"\n" for i in items)
    return json.dumps(items).encode()


class PushOnlyClient(threading.Thread):
    """Pushes push-only runs, each run's lifecycle whole within one request, until told to stop."""

    def __init__(self, target: Target, seed: int, truth: PushTruth, created_at: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.truth, self.created_at, self.stop = target, truth, created_at, stop
        self.rng = random.Random(seed)
        self.seed = seed
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                runs = self.rng.randrange(1, 20)
                local = PushTruth()
                items: list[object] = []
                for _ in range(runs):
                    items += lifecycle(self.rng, f"run_push_{self.seed}_{n}", self.created_at, local)
                    n += 1
                ndjson = self.rng.random() < 0.5
                answer = self.target.post(encode(items, ndjson), ndjson, runs=runs)
                assert answer.status_code == 200 and answer.json()["invalid"] == [], answer.text
                with self.target.lock:  # the clients share the truth
                    for key in ("finished", "error_codes", "incomplete_reasons", "tokens"):
                        getattr(self.truth, key).update(getattr(local, key))
        except BaseException as exc:  # reported by the test
            self.error = exc


class SimulatorPusher(threading.Thread):
    """Pushes the simulator's own runs (those the exporter also polls) as each new state appears."""

    def __init__(self, target: Target, sim: Simulator, since: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.sim, self.since, self.stop = target, sim, since, stop
        self.sent: set[tuple[str, str]] = set()
        self.rng = random.Random(11)
        self.error: BaseException | None = None

    def flush(self) -> None:
        fresh = [r for r in self.sim.engine.runs()
                 if r["created_at"] >= self.since and (r["id"], r["status"]) not in self.sent]
        for start in range(0, len(fresh), 40):
            batch = fresh[start:start + 40]
            items: list[object] = []
            for run in batch:
                items.append({"event": f"thread.run.{run['status']}", "data": run} if self.rng.random() < 0.5
                             else run)
                if run["status"] in statuses.TERMINAL:  # an earlier state arriving late: stale
                    older = {k: v for k, v in run.items() if k not in _END_FIELD.values() and k != "usage"}
                    items.append({**older, "status": "in_progress"})
            ndjson = self.rng.random() < 0.5
            answer = self.target.post(encode(items, ndjson), ndjson)
            assert answer.status_code == 200 and answer.json()["invalid"] == [], answer.text
            self.sent.update((r["id"], r["status"]) for r in batch)

    def run(self) -> None:
        try:
            while not self.stop.wait(0.3):  # a push cadence, not synchronisation
                self.flush()
        except BaseException as exc:
            self.error = exc


# -- the test ------------------------------------------------------------------------------------------

EXPORTER_FLAGS = ("--source", "threads", "--source", "push", "--poll-interval", "0.2", "--idle-poll-interval", "0.5",
                  "--max-requests-per-second", "500")
EXPORTER_ENV = {"ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN}


def _push_only_finished(samples: Samples) -> float:
    return total(samples, FINISHED, assistant_id=PUSH_ASSISTANT)


def _hand_written(target: Target, created_at: int, truth: PushTruth) -> None:
    """Every status form, duplicates, stale updates and bad items in one request, with its exact answer."""
    a, b = "run_push_hand_a", "run_push_hand_b"
    items: list[object] = [
        {"id": a, "status": 1, "thread_id": PUSH_THREAD, "assistant_id": PUSH_ASSISTANT, "created_at": created_at},
        {"event": "thread.run.queued", "data": _run_object(a, "queued", created_at)},
        {"id": a, "status": "InProgress", "assistant_id": PUSH_ASSISTANT, "created_at": created_at},
        {"id": a, "status": "InProgress", "assistant_id": PUSH_ASSISTANT, "created_at": created_at},  # duplicate
        {"id": a, "status": "Completed", "assistant_id": PUSH_ASSISTANT, "created_at": created_at,
         "usage": {"prompt_tokens": 7, "completion_tokens": 5}},
        {"id": a, "status": "queued", "assistant_id": PUSH_ASSISTANT, "created_at": created_at},  # stale
        {"event": "thread.run.failed", "data": _run_object(b, "failed", created_at, failed_at=created_at + 3,
                                                           last_error={"code": "rate_limit_exceeded"})},
        {"id": b, "status": 3, "assistant_id": PUSH_ASSISTANT, "created_at": created_at},  # stale
        {"id": b, "status": 9, "assistant_id": PUSH_ASSISTANT, "model": "gpt-push", "created_at": created_at},
        42,
        {"id": "run_push_hand_c"},
        {"event": "thread.message.delta", "data": {"id": "msg_1"}},
        {"id": "run_push_hand_d", "status": "exploded"},
    ]
    answer = target.post(encode(items, False), False)
    assert answer.json() == {"accepted": 5, "duplicates": 2, "stale": 2, "invalid": [
        {"index": 9, "reason": "not_object"}, {"index": 10, "reason": "missing_status"},
        {"index": 11, "reason": "unsupported_event"}, {"index": 12, "reason": "unknown_status"}]}
    truth.add("completed", None, None, 7, 5)
    truth.add("failed", "rate_limit_exceeded", None, 0, 0)
    # NDJSON, with a line that is not JSON.
    body = (json.dumps({"id": "run_push_hand_e", "status": "Incomplete", "assistant_id": PUSH_ASSISTANT,
                        "incomplete_details": {"reason": "max_prompt_tokens"}}) + "\n{oops\n").encode()
    answer = target.post(body, True)
    assert answer.json() == {"accepted": 1, "duplicates": 0, "stale": 0,
                             "invalid": [{"index": 1, "reason": "not_json"}]}
    truth.add("incomplete", None, "max_prompt_tokens", 0, 0)
    bad = target.post(encode(items[:1], False), False, token="not-the-token-0123456789")
    assert bad.status_code == 401


def _expected(sim: Simulator, since: int, truth: PushTruth) -> dict[str, dict[str, float]]:
    sim_truth = sim.engine.truth(since)
    return {
        "status": {s: float(sim_truth.finished.get(s, 0) + truth.finished[s]) for s in statuses.TERMINAL_STATUSES},
        "code": {k: float(v) for k, v in (Counter(sim_truth.error_codes) + truth.error_codes).items()},
        "reason": {k: float(v) for k, v in (Counter(sim_truth.incomplete_reasons) + truth.incomplete_reasons).items()},
        "type": {k: float(v) for k, v in (Counter(sim_truth.tokens) + truth.tokens).items()},
    }


def test_pushed_and_polled_runs_equal_the_truth_across_kill_9(sim: Simulator, start_exporter: ExporterStarter) -> None:
    quiesce(sim)
    threads = sim.thread_ids()
    exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=threads, env=EXPORTER_ENV)
    stop = threading.Event()
    clients: list[PushOnlyClient] = []
    pusher: SimulatorPusher | None = None
    try:
        exporter.wait_ready()
        want = sum(sim.engine.truth().by_status.values())
        wait_until(lambda: total(exporter.scrape(), "assistants_runs") == want, 30, 0.2, "initial sweep")
        assert total(exporter.scrape(), FINISHED) == 0  # history never counts

        target = Target(exporter.url)
        truth = PushTruth()
        created_at = int(sim.engine.now())
        _hand_written(target, created_at, truth)
        wait_until(lambda: total(exporter.scrape(), "assistants_exporter_push_requests_total", code="401") == 1,
                   10, 0.1, "the 401 to be counted")

        since = sim.engine.truth().now + 1
        wait_until(lambda: sim.engine.now() >= since, 5, 0.05, "the next second")
        sim.engine.set_workload(True)
        pusher = SimulatorPusher(target, sim, since, stop)
        clients = [PushOnlyClient(target, seed, truth, created_at, stop) for seed in (1, 2, 3)]
        for t in (pusher, *clients):
            t.start()
        wait_until(lambda: target.answered_runs >= 150 and sum(sim.engine.truth(since).finished.values()) >= 20,
                   60, 0.05, "pushes answered and simulator runs finished")

        # kill -9 while the clients push; they hold what got no answer until the exporter is back.
        target.up.clear()
        exporter.kill9()
        exporter = start_exporter(sim, *EXPORTER_FLAGS, threads=threads, env=EXPORTER_ENV)
        exporter.wait_ready()
        samples = exporter.scrape()
        with target.lock:
            answered, unanswered = target.answered_runs, target.unanswered_runs
            requests_unanswered = target.unanswered_requests
        assert requests_unanswered >= 1  # the kill did hit the clients
        # Hand-written runs plus every run in a request answered 200 survived; an unanswered one may have.
        assert 3 + answered <= _push_only_finished(samples) <= 3 + answered + unanswered
        target.url = exporter.url
        target.up.set()

        wait_until(lambda: target.answered_runs >= answered + 150, 60, 0.05, "pushes after the restart")
        wait_until(lambda: sum(sim.engine.truth(since).finished.values()) >= 60, 90, 0.2, "simulator workload")
        sim.engine.set_workload(False)
        stop.set()
        workers: list[SimulatorPusher | PushOnlyClient] = [pusher, *clients]
        for t in workers:
            t.join(60)
            assert not t.is_alive() and t.error is None, t.error
        quiesce(sim)
        pusher.flush()  # the final state of every simulator run, pushed too

        expected = _expected(sim, since, truth)
        wait_until(lambda: by_label(exporter.scrape(), FINISHED, "status") == expected["status"], 30, 0.2,
                   f"finished totals to equal {expected['status']}")
        samples = exporter.scrape()
        nonzero = {label: {k: v for k, v in by_label(samples, name, label).items() if v}
                   for name, label in (("assistants_run_errors_total", "code"),
                                       ("assistants_run_incomplete_total", "reason"))}
        assert nonzero["code"] == expected["code"]
        assert nonzero["reason"] == expected["reason"]
        assert by_label(samples, "assistants_run_tokens_total", "type") == expected["type"]
        # Push-only runs are under source="push"; nothing polled them.
        push_total = float(sum(truth.finished.values()))
        assert total(samples, FINISHED, assistant_id=PUSH_ASSISTANT, source="push") == push_total
        assert total(samples, FINISHED, assistant_id=PUSH_ASSISTANT, source="threads") == 0
        assert total(samples, FINISHED, source="threads") > 0  # some simulator runs were polled first
        items = by_label(samples, "assistants_exporter_push_items_total", "outcome")
        assert items["invalid"] == 5 and items["duplicate"] > 0 and items["stale"] > 0
        assert total(samples, "assistants_exporter_push_requests_total", code="401") == 1
    finally:
        stop.set()
        exporter.stop()
