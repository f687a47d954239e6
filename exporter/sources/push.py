"""The push receiver: applications tell the exporter what their runs are doing.

`POST /api/v1/runs` takes one JSON object, a JSON array of up to MAX_ITEMS, or NDJSON. Each item is an
Assistants `RunObject`, a `thread.run.*` stream event, a Responses `Response`, or a minimal run
(`{"id", "status"}` and any of the RunObject fields). `status` may be an API string, a RunStatus enum name or
its integer value. `PUT`/`DELETE /api/v1/threads/{thread_id}` register or drop a thread to poll;
`PUT`/`DELETE /api/v1/responses/{response_id}` a background response to poll by id until it ends (with
`--source responses`; a pushed unfinished `Response` is polled the same way).

Every request needs `Authorization: Bearer <token>`; the answer is sent only once the daemon has committed
what the request changed, so a 200 survives `kill -9`. One bad item never rejects its neighbours.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from exporter.flags import ConfigError
from exporter.inbox import Inbox, Item, PushOutcome, Registration, RunItems, StoreUnavailable
from exporter.logs import CountingRateLimiter
from exporter.model import (
    REASON_NOT_OBJECT,
    REASON_WRONG_TYPE,
    SOURCE_PUSH,
    SOURCE_RESPONSES,
    SOURCE_THREADS,
    ParseResult,
    RunSnapshot,
    parse_response,
    parse_run,
    string_problem,
    thread_id_problem,
)
from exporter.server import read_body, require_bearer
from exporter.shards import Sharding, run_key
from exporter.sources.spec import CheckContext, SourceSpec

log = logging.getLogger(__name__)

MAX_ITEMS = 1000
PUSH_TOKEN_ENV = "ASSISTANTS_EXPORTER_PUSH_TOKEN"
MIN_PUSH_TOKEN = 16  # characters; a guessable token would open the write endpoints
# Marks a request one replica forwards to the owner of its items: the owner takes them, never forwards again.
FORWARDED_HEADER = "X-Assistants-Exporter-Forwarded-By"
COMMIT_TIMEOUT = 10.0  # seconds a request waits for its commit before answering 503
FORWARD_LOG_INTERVAL = 60.0  # one warning per unreachable shard this often, with the count held back
REASON_UNSUPPORTED_EVENT = "unsupported_event"
REASON_NOT_JSON = "not_json"
# RunStatus enum values, in the client library's order.
ENUM_BY_VALUE: tuple[str, ...] = ("Null", "Created", "Queued", "InProgress", "Completed", "RequiresAction",
                                  "Expired", "Cancelling", "Cancelled", "Failed", "Incomplete")
_JSON_TYPES = frozenset({"application/json"})
_NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


class PushTokens:
    """The accepted bearer tokens: from a file (one a line, so a rotation can keep the old one) or env."""

    def __init__(self, tokens: Sequence[str], path: Path | None = None) -> None:
        self.tokens = list(tokens)
        self.path = path

    def reload(self) -> None:
        """Re-read the token file; on failure keep the tokens in force (and say so)."""
        if self.path is None:
            return
        try:
            tokens = read_token_file(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot re-read push token file %s: %s; keeping the tokens in force", self.path,
                        type(exc).__name__)
            return
        if tokens:
            self.tokens = tokens


def read_token_file(path: Path) -> list[str]:
    """Tokens from a file: one a line; blank lines and lines starting with '#' are ignored. Raises OSError."""
    text = path.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


# -- items --------------------------------------------------------------------------------------


def parse_item(obj: object, now: float) -> ParseResult:
    """One pushed item as a single-run snapshot with source `push`, or why it is invalid. Never raises."""
    if not isinstance(obj, dict):
        return ParseResult(None, REASON_NOT_OBJECT)
    if "event" in obj and "data" in obj:
        event = obj["event"]
        if not isinstance(event, str) or not event.startswith("thread.run.") or event.startswith("thread.run.step"):
            return ParseResult(None, REASON_UNSUPPORTED_EVENT)
        obj = obj["data"]
        if not isinstance(obj, dict):
            return ParseResult(None, REASON_NOT_OBJECT)
    fields: dict[str, Any] = dict(obj)
    status = fields.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 0 <= status < len(ENUM_BY_VALUE):
        fields["status"] = ENUM_BY_VALUE[status]
    if fields.get("created_at") is None:
        fields["created_at"] = int(now)  # the time the exporter first heard of it
    thread_id = fields.get("thread_id")
    if thread_id is not None and (not isinstance(thread_id, str) or thread_id_problem(thread_id)):
        return ParseResult(None, (string_problem(thread_id) if isinstance(thread_id, str) else None)
                           or REASON_WRONG_TYPE)
    if fields.get("object") == "response":
        parsed = parse_response(fields, SOURCE_PUSH)
    else:
        parsed = parse_run(fields, "", SOURCE_PUSH)
    if parsed.invalid_reason is not None:
        return ParseResult(None, parsed.invalid_reason)  # a push with no usable status is rejected whole
    return parsed


def split_body(body: bytes, ndjson: bool) -> list[object] | None:
    """The items of a body; None when it is not JSON at all. An NDJSON line that is not JSON is an item
    that fails to parse (reported by index), not a reason to reject the body."""
    if ndjson:
        items: list[object] = []
        for line in body.split(b"\n"):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except (ValueError, RecursionError):
                    items.append(_NotJson())
        return items
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, list) else [decoded]


class _NotJson:
    """Stands for an NDJSON line that did not parse."""


@dataclass(slots=True)
class Parsed:
    """A request's items: runs this replica owns, items for other shards (by shard: (index, raw item)),
    and the invalid ones."""

    runs: list[RunSnapshot] = field(default_factory=list)
    remote: dict[int, list[tuple[int, object]]] = field(default_factory=dict)
    invalid: list[tuple[int, str]] = field(default_factory=list)


def parse_items(items: list[object], now: float, sharding: Sharding | None = None) -> Parsed:
    out = Parsed()
    for index, obj in enumerate(items):
        if isinstance(obj, _NotJson):
            out.invalid.append((index, REASON_NOT_JSON))
            continue
        parsed = parse_item(obj, now)
        snap = parsed.snapshot
        if snap is None:
            out.invalid.append((index, parsed.invalid_reason or REASON_WRONG_TYPE))
            continue
        owner = sharding.owner(run_key(snap.scope, snap.id)) if sharding is not None else None
        if owner is None or sharding is None or owner == sharding.shard:
            out.runs.append(snap)
        else:
            out.remote.setdefault(owner, []).append((index, obj))
    return out


# -- HTTP ---------------------------------------------------------------------------------------


def _path_is_utf8(request: Request) -> bool:
    """Starlette decodes %FF in a path to U+FFFD; an id must be what the client sent, so decode strictly."""
    raw = request.scope.get("raw_path") or request.scope.get("path", "").encode("utf-8", "surrogatepass")
    try:
        unquote_to_bytes(raw.split(b"?", 1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=code, headers=headers)


class PushReceiver:
    name = SOURCE_PUSH

    def __init__(
        self,
        inbox: Inbox,
        tokens: PushTokens,
        *,
        max_body: int,
        clock: Callable[[], float],
        on_request: Callable[[int], None],
        commit_timeout: float = COMMIT_TIMEOUT,
        sharding: Sharding | None = None,
        polls_responses: bool = False,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sharding = sharding or Sharding()
        self._mono = mono
        self._forward_log = CountingRateLimiter(FORWARD_LOG_INTERVAL)
        self._peers: httpx.AsyncClient | None = None
        self.inbox = inbox
        self.tokens = tokens
        self.max_body = max_body
        self.clock = clock
        self.on_request = on_request
        self.commit_timeout = commit_timeout
        self.polls_responses = polls_responses  # --source responses with a way to reach the API

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/runs", self._counted(self.post_runs), methods=["POST"]),
            Route("/api/v1/threads/{thread_id:path}", self._counted(self.thread), methods=["PUT", "DELETE"]),
            Route("/api/v1/responses/{response_id:path}", self._counted(self.response),
                  methods=["PUT", "DELETE"]),
        ]

    def _counted(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                require_bearer(request, self.tokens.tokens)
                response = await handler(request)
            except HTTPException as exc:
                response = _error(exc.status_code, exc.detail, dict(exc.headers or {}))
            self.on_request(response.status_code)
            return response
        return endpoint

    async def post_runs(self, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and media not in _NDJSON_TYPES:
            return _error(415, "use Content-Type application/json or application/x-ndjson")
        body = await read_body(request, self.max_body)
        items = split_body(body, media in _NDJSON_TYPES)
        if items is None:
            return _error(400, "body is not JSON")
        if len(items) > MAX_ITEMS:
            return _error(413, f"more than {MAX_ITEMS} items")
        forwarded = FORWARDED_HEADER in request.headers
        parsed = parse_items(items, self.clock(), None if forwarded else self.sharding)
        outcome = PushOutcome()
        if parsed.remote:
            failure = await self._forward_runs(request, parsed.remote, outcome)
            if failure is not None:
                return failure
        # Pushed Responses (no scope) that have not ended are polled by id when the responses source runs.
        response_ids = {obj.get("id") for obj in items if isinstance(obj, dict) and obj.get("object") == "response"}
        follow = [r.id for r in parsed.runs if r.id in response_ids and not r.terminal]
        done = await self._submit(RunItems(parsed.runs, parsed.invalid, self.name, follow=follow))
        if isinstance(done, Response):
            return done
        assert isinstance(done, RunItems)
        outcome.accepted += done.outcome.accepted
        outcome.duplicates += done.outcome.duplicates
        outcome.stale += done.outcome.stale
        outcome.invalid = sorted([*outcome.invalid, *done.outcome.invalid])
        return JSONResponse(outcome.as_json())

    async def _forward_runs(self, request: Request, remote: dict[int, list[tuple[int, object]]],
                            outcome: PushOutcome) -> Response | None:
        """Send each other shard its items; fold the owners' answers into `outcome`. A failure is a 502, so
        the client retries the whole request (idempotent: what an owner took is a duplicate then)."""
        async def one(shard: int, items: list[tuple[int, object]]) -> Response | None:
            answer = await self._to_peer(request, shard, "POST", "/api/v1/runs",
                                         json.dumps([obj for _, obj in items]).encode())
            if isinstance(answer, Response):
                return answer
            if answer.status_code != 200:
                return _error(502, f"shard {shard} answered {answer.status_code}")
            body = answer.json()
            outcome.accepted += int(body.get("accepted", 0))
            outcome.duplicates += int(body.get("duplicates", 0))
            outcome.stale += int(body.get("stale", 0))
            for entry in body.get("invalid", []):
                outcome.invalid.append((items[int(entry["index"])][0], str(entry["reason"])))
            return None
        results = await asyncio.gather(*(one(shard, items) for shard, items in sorted(remote.items())))
        return next((r for r in results if r is not None), None)

    async def _to_peer(self, request: Request, shard: int, method: str, path: str,
                       body: bytes = b"") -> httpx.Response | Response:
        """The owner's answer to this request, or a 502 when it cannot be reached."""
        if self._peers is None:
            self._peers = httpx.AsyncClient(timeout=httpx.Timeout(self.commit_timeout + 5), follow_redirects=False)
        headers = {"Authorization": request.headers.get("authorization", ""), "Content-Type": "application/json",
                   FORWARDED_HEADER: str(self.sharding.shard)}
        try:
            return await self._peers.request(method, self.sharding.peer(shard) + path, content=body, headers=headers)
        except (httpx.HTTPError, ValueError) as exc:
            self._log_forward_failure(shard, type(exc).__name__)
            return _error(502, f"shard {shard} cannot be reached; retry")

    def _log_forward_failure(self, shard: int, why: str) -> None:
        """One line a minute per shard: a peer that is down must not log every forwarded request."""
        held = self._forward_log.allow(str(shard), self._mono())
        if held is None:
            return
        more = f" ({held} more failures to forward to it since the last such line, not logged)" if held else ""
        log.warning("cannot forward to shard %d: %s%s; logged once a minute per shard", shard, why, more)

    async def aclose(self) -> None:
        if self._peers is not None:
            await self._peers.aclose()

    async def thread(self, request: Request) -> Response:
        if not _path_is_utf8(request):
            return _error(400, "invalid thread id: the path is not UTF-8 once percent-decoded")
        return await self._register(request, str(request.path_params["thread_id"]), SOURCE_THREADS, "thread")

    async def response(self, request: Request) -> Response:
        if not self.polls_responses:
            return _error(409, "responses are not polled here: run with --source responses and an API key")
        if not _path_is_utf8(request):
            return _error(400, "invalid response id: the path is not UTF-8 once percent-decoded")
        return await self._register(request, str(request.path_params["response_id"]), SOURCE_RESPONSES,
                                    "response")

    async def _register(self, request: Request, scope: str, source: str, kind: str) -> Response:
        """PUT registers a scope to poll, DELETE drops it; on the shard that owns it (forwarded otherwise)."""
        problem = thread_id_problem(scope)
        if problem is not None:
            return _error(400, f"invalid {kind} id: {problem}")
        owner = self.sharding.owner(scope)
        if owner != self.sharding.shard and FORWARDED_HEADER not in request.headers:
            answer = await self._to_peer(request, owner, request.method, request.url.path)
            if isinstance(answer, Response):
                return answer
            return Response(answer.content, answer.status_code, media_type="application/json")
        done = await self._submit(Registration(scope, source, request.method == "PUT"))
        if isinstance(done, Response):
            return done
        assert isinstance(done, Registration)
        code = {"full": 429, "missing": 404}.get(done.result, 200)
        return JSONResponse({f"{kind}_id": scope, "result": done.result}, status_code=code)

    async def _submit(self, item: Item) -> Item | Response:
        try:
            return await self.inbox.submit(item, self.commit_timeout)
        except StoreUnavailable:
            return _error(503, "the state file cannot be written right now; retry", {"Retry-After": "1"})


def _check(ctx: CheckContext) -> None:
    if not ctx.has_push_tokens:
        raise ConfigError(f"--source push needs a token: --push-token-file or env {PUSH_TOKEN_ENV}")


# The write endpoints exist whenever a token is set (registrations need them too); `--source push` says that
# runs arrive that way, so it needs a token and remembers finished runs to dedupe them.
SPEC = SourceSpec("push", "accept runs on /api/v1/runs", "none", check=_check, receives=True)
