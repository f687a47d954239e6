"""The HTTP side: an Assistants-v2-compatible `/v1/threads...` API on a ThreadingHTTPServer."""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import logging
import math
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from exporter.simulator.clock import Clock, FakeClock, WallClock
from exporter.simulator.engine import Engine
from exporter.simulator.faults import FaultInjector, Faults, RateLimitState, format_duration
from exporter.simulator.langgraph import LangGraphEngine, LangGraphError
from exporter.simulator.responses import ResponseEngine, response_routes
from exporter.simulator.scenarios import SCENARIOS
from exporter.simulator.session_stream import StreamFaults, open_stream
from exporter.simulator.sessions import SESSION_SCENARIOS, SessionsApi, SessionsEngine
from exporter.simulator.wire import JSON, ApiError, foundry_page

FLAVORS: tuple[str, ...] = ("openai", "foundry", "langgraph")
# Foundry's Azure.AI.Agents api-versions that the simulator accepts; anything else is a 400.
FOUNDRY_API_VERSIONS: tuple[str, ...] = ("v1", "2025-05-01", "2025-05-15-preview")
# The audience Foundry accepts tokens for (the scope https://ai.azure.com/.default without "/.default").
FOUNDRY_RESOURCE = "https://ai.azure.com"
MSI_PATH = "/msi/token"
MSI_API_VERSION = "2019-08-01"

_log = logging.getLogger(__name__)
_THREAD = r"(?P<thread_id>[^/]+)"
_RUN = r"(?P<run_id>[^/]+)"
Handler = Callable[["_Request"], JSON]

_SERVER_ERRORS: dict[int, tuple[str, str]] = {
    500: ("The server had an error while processing your request. Sorry about that!", "server_error"),
    502: ("Bad gateway.", "server_error"),
    503: ("The server is overloaded or not ready yet.", "server_error"),
}


class _Request:
    """What a route handler needs from one HTTP request."""

    def __init__(self, params: dict[str, str], query: dict[str, list[str]], body: dict[str, Any]) -> None:
        self.params = params
        self.query = query
        self.body = body

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(
            400,
            f"Invalid 'limit': expected an integer, but got '{raw[:40]}' instead.",
            param="limit",
            code="invalid_type",
        ) from None
    if limit < 1:
        raise ApiError(
            400,
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if limit > 100:
        raise ApiError(
            400,
            f"Invalid 'limit': integer above maximum value. Expected a value <= 100, but got {limit} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return limit


def _parse_order(raw: str | None) -> str:
    if raw is None:
        return "desc"
    if raw not in ("asc", "desc"):
        raise ApiError(
            400,
            f"Invalid value for 'order': expected one of 'asc' or 'desc', but got '{raw[:40]}' instead.",
            param="order",
            code="invalid_value",
        )
    return raw


@dataclass(frozen=True, slots=True)
class _IssuedToken:
    resource: str
    expires_on: int


class _TokenIssuer:
    """Bearer tokens for the foundry flavor, issued by the managed identity endpoint, checked on every call."""

    def __init__(self, clock: Clock, lifetime: float) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self._tokens: dict[str, _IssuedToken] = {}
        self._lock = threading.Lock()
        self.issued = 0

    def issue(self, resource: str) -> JSON:
        now = self.clock.now()
        expires_on = int(now + self.lifetime)
        token = "simtok_" + secrets.token_urlsafe(24)
        with self._lock:
            # Forget expired tokens so a long run with short lifetimes stays small.
            self._tokens = {k: v for k, v in self._tokens.items() if v.expires_on > now}
            self._tokens[token] = _IssuedToken(resource, expires_on)
            self.issued += 1
        # App Service's 2019-08-01 answer: expires_on is epoch seconds as a string.
        return {"access_token": token, "expires_on": str(expires_on), "resource": resource, "token_type": "Bearer"}

    def check(self, token: str) -> str | None:
        """Why a token is refused, or None when it is one of ours, for Foundry, and not expired."""
        with self._lock:
            issued = self._tokens.get(token)
        if issued is None:
            return "not issued by this identity endpoint"
        if issued.resource.rstrip("/") != FOUNDRY_RESOURCE:
            return "issued for another audience"
        if self.clock.now() >= issued.expires_on:
            return "expired"
        return None


class Simulator:
    """An Assistants-v2-compatible runs API on loopback, backed by a seeded lifecycle engine.

    flavor="openai" serves OpenAI's /v1 API; flavor="foundry" serves Azure AI Foundry classic agents under
    /api/projects/{project}/ with Entra-style bearer tokens from a managed identity endpoint (docs/simulator.md).
    """

    def __init__(
        self,
        scenario: str = "steady",
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        clock: Clock | None = None,
        speed: float = 1.0,
        faults: Faults | None = None,
        *,
        flavor: str = "openai",
        project: str = "sim-project",
        token_lifetime: float = 3600.0,
        identity_header: str | None = None,
        token_clock: Clock | None = None,
        sessions_scenario: str | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; choose from {', '.join(FLAVORS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", project):
            raise ValueError("project must be letters, digits, '_', '.' or '-'")
        if not token_lifetime > 0 or not math.isfinite(token_lifetime):
            raise ValueError("token_lifetime must be a positive number of seconds")
        self.flavor = flavor
        self.project = project
        # The identity endpoint's shared secret (App Service's IDENTITY_HEADER).
        self.identity_header = identity_header or secrets.token_urlsafe(16)
        # Tokens live on the wall clock by default: azure-identity compares expires_on with time.time().
        self.tokens = _TokenIssuer(token_clock if token_clock is not None else WallClock(), token_lifetime)
        self.scenario = SCENARIOS[scenario]
        self.host = host
        self._requested_port = port
        self.api_key = api_key
        self.clock: Clock = clock if clock is not None else WallClock()
        self.engine = Engine(self.scenario, seed, self.clock, speed)
        if sessions_scenario is not None and sessions_scenario not in SESSION_SCENARIOS:
            raise ValueError(f"unknown sessions scenario {sessions_scenario!r}; "
                             f"choose from {', '.join(SESSION_SCENARIOS)}")
        # The Agents API (sessions and turns), openai flavor only; without a scenario its sessions are scripted.
        self.sessions = SessionsEngine(self.clock, seed, speed,
                                       SESSION_SCENARIOS[sessions_scenario] if sessions_scenario else None)
        self._sessions_api = SessionsApi(self.sessions, _parse_limit, _parse_order)
        self.stream_faults = StreamFaults(seed=seed)  # GET /v1/agents/sessions/{id}/events (live SSE)
        self.responses = ResponseEngine(self.clock, seed, speed)
        # The LangGraph Agent Server (flavor="langgraph"), with its workload in that flavor (for --demo).
        self.langgraph = LangGraphEngine(self.clock, seed, speed, workload=flavor == "langgraph")
        self.faults: Faults = faults if faults is not None else copy.deepcopy(self.scenario.faults)
        fault_seed = self.faults.seed if self.faults.seed is not None else seed
        self._injector = FaultInjector(fault_seed)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._routes = self._build_routes()

    # ----- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self._requested_port), _RequestHandler)
        server.simulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="simulator-http", daemon=True
        )
        self._thread.start()
        if not isinstance(self.clock, FakeClock):
            # With the wall clock, tick the engines so memory and catch-up work stay small between requests.
            self._ticker = threading.Thread(target=self._tick, name="simulator-tick", daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(1.0):
            self.engine.now()
            self.sessions.now()
            self.langgraph.now()

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in (self._thread, self._ticker):
            if thread is not None:
                thread.join(timeout=5.0)
        self._thread = self._ticker = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """The API base: `.../v1`, or for the foundry flavor the project endpoint `.../api/projects/{project}`."""
        if self.flavor == "foundry":
            return f"http://{self.host}:{self.port}/api/projects/{self.project}"
        if self.flavor == "langgraph":
            return f"http://{self.host}:{self.port}"
        return f"http://{self.host}:{self.port}/v1"

    @property
    def identity_endpoint(self) -> str:
        """The managed identity endpoint (set IDENTITY_ENDPOINT to this, IDENTITY_HEADER to identity_header)."""
        return f"http://{self.host}:{self.port}{MSI_PATH}"

    def thread_ids(self) -> list[str]:
        return self.langgraph.thread_ids() if self.flavor == "langgraph" else self.engine.thread_ids()

    # ----- request handling ----------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        e = self.engine

        def list_runs(r: _Request) -> JSON:
            limit, order = _parse_limit(r.arg("limit")), _parse_order(r.arg("order"))
            page, data = e.list_runs(
                r.params["thread_id"], limit=limit, order=order, after=r.arg("after"), before=r.arg("before")
            )
            page["data"] = self._injector.corrupt_items(self.faults, data)
            return self._envelope(page)

        def list_steps(r: _Request) -> JSON:
            limit, order = _parse_limit(r.arg("limit")), _parse_order(r.arg("order"))
            return self._envelope(e.list_steps(r.params["thread_id"], r.params["run_id"], limit=limit, order=order))

        def list_threads(r: _Request) -> JSON:
            limit, order = _parse_limit(r.arg("limit")), _parse_order(r.arg("order"))
            data, has_more = e.list_threads(limit=limit, order=order, after=r.arg("after"), before=r.arg("before"))
            return foundry_page(data, has_more)

        def create_thread(r: _Request) -> JSON:
            meta = r.body.get("metadata")
            metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else None
            return e.api_create_thread(metadata)

        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/threads", create_thread),
            ("GET", f"/threads/{_THREAD}", lambda r: e.api_get_thread(r.params["thread_id"])),
            ("DELETE", f"/threads/{_THREAD}", lambda r: e.api_delete_thread(r.params["thread_id"])),
            ("GET", f"/threads/{_THREAD}/runs", list_runs),
            ("POST", f"/threads/{_THREAD}/runs", lambda r: e.api_create_run(r.params["thread_id"], r.body)),
            (
                "GET",
                f"/threads/{_THREAD}/runs/{_RUN}",
                lambda r: e.get_run(r.params["thread_id"], r.params["run_id"]),
            ),
            ("GET", f"/threads/{_THREAD}/runs/{_RUN}/steps", list_steps),
            (
                "POST",
                f"/threads/{_THREAD}/runs/{_RUN}/cancel",
                lambda r: e.cancel_run(r.params["thread_id"], r.params["run_id"]),
            ),
            (
                "POST",
                f"/threads/{_THREAD}/runs/{_RUN}/submit_tool_outputs",
                lambda r: e.submit_tool_outputs(r.params["thread_id"], r.params["run_id"], r.body),
            ),
        ]
        if self.flavor == "foundry":  # OpenAI's API has no thread listing; Foundry's has
            routes.append(("GET", "/threads", list_threads))
        routes += response_routes(self.responses, self.flavor == "foundry")
        return [(method, re.compile(f"^{pattern}$"), fn) for method, pattern, fn in routes]

    def _envelope(self, page: JSON) -> JSON:
        """OpenAI's list envelope as is, or Foundry's {data, last_id, has_more} (last_id null on the last page)."""
        if self.flavor != "foundry":
            return page
        last_id = page["last_id"] if page["has_more"] else None
        return {"data": page["data"], "last_id": last_id, "has_more": page["has_more"]}

    def _authorized(self, headers: Any) -> ApiError | None:
        """Bearer (OpenAI) or api-key (Azure) auth; Foundry takes only its own bearer tokens. Never echoed back."""
        if self.flavor == "foundry":
            return self._token_authorized(headers)
        if self.flavor == "langgraph":  # x-api-key, checked only when the simulator has a key (as a cloud server)
            given = (headers.get("x-api-key") or "").strip()
            if self.api_key is None or hmac.compare_digest(given.encode(), self.api_key.encode()):
                return None
            return LangGraphError(403, "Missing or invalid x-api-key" if given else "Missing x-api-key")
        auth = headers.get("Authorization") or ""
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        key = key or (headers.get("api-key") or "").strip()
        if not key:
            return ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if self.api_key is not None and not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    def _token_authorized(self, headers: Any) -> ApiError | None:
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            return ApiError(401, "Access token is missing.", type_="invalid_request_error", code="PermissionDenied")
        problem = self.tokens.check(token)
        if problem is not None:
            return ApiError(401, f"Access token is {problem}.", code="PermissionDenied")
        return None

    def _identity(self, method: str, target: str, headers: Any) -> _Response:
        """App Service's managed identity endpoint: GET /msi/token?resource=..&api-version=2019-08-01."""
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        given = headers.get("X-IDENTITY-HEADER") or ""
        if method != "GET":
            return _Response(405, {"statusCode": 405, "message": "Only GET is supported."})
        if not hmac.compare_digest(given.encode(), self.identity_header.encode()):
            return _Response(401, {"statusCode": 401, "message": "Missing or wrong X-IDENTITY-HEADER."})
        if query.get("api-version", [""])[-1] != MSI_API_VERSION:
            return _Response(400, {"statusCode": 400, "message": f"api-version must be {MSI_API_VERSION}."})
        resource = query.get("resource", [""])[-1].strip()
        if not resource:
            return _Response(400, {"statusCode": 400, "message": "resource is required."})
        return _Response(200, self.tokens.issue(resource))

    def handle(self, method: str, target: str, headers: Any, raw_body: bytes) -> _Response:
        """Answer one request: forced statuses, auth, the rate limit, random errors, then the route."""
        if self.flavor == "foundry" and urlsplit(target).path.rstrip("/") == MSI_PATH:
            return self._identity(method, target, headers)  # a separate service: no API faults or rate limit
        faults = self.faults
        if faults.latency > 0:
            time.sleep(faults.latency)  # a simulated slow API, not synchronisation
        forced = self._injector.forced(faults)
        if forced is not None:
            response = self._with_rate_headers(self._error_response(forced, faults.forced_retry_after_ms), None)
            if forced == 429:  # a forced 429 looks like an exhausted bucket
                response.headers["x-ratelimit-remaining-requests"] = "0"
                response.headers["x-ratelimit-reset-requests"] = format_duration(faults.forced_retry_after_ms / 1000)
            return response
        denied = self._authorized(headers)
        if denied is not None:
            return self._with_rate_headers(_Response.error(denied), None)
        state = self._injector.rate_limit(faults, self.clock.now())
        if not state.allowed:
            retry_ms = max(1, math.ceil(state.retry_after_seconds * 1000))
            return self._with_rate_headers(self._error_response(429, retry_ms), state)
        random_status = self._injector.random_error(faults)
        if random_status is not None:
            return self._with_rate_headers(self._error_response(random_status, None), state)
        if self.flavor == "langgraph":  # its own routes, bodies and errors (exporter/simulator/langgraph.py)
            return self._with_rate_headers(self._langgraph_response(method, target, raw_body), state)
        try:
            stream = (open_stream(self.sessions, urlsplit(target).path.rstrip("/"), headers, self.stream_faults,
                                  self._stopping) if self.flavor == "openai" and method == "GET" else None)
            if stream is not None:
                return self._with_rate_headers(_Response(200, {}, stream=stream), state)
            body = self._route(method, target, headers, raw_body)
        except ApiError as err:
            return self._with_rate_headers(_Response.error(err), state)
        truncate = self._injector.should_truncate(faults)
        return self._with_rate_headers(_Response(200, body, truncate=truncate), state)

    def _route(self, method: str, target: str, headers: Any, raw_body: bytes) -> JSON:
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        prefix = f"/api/projects/{self.project}/" if self.flavor == "foundry" else "/v1/"
        if not path.startswith(prefix):
            raise ApiError(404, f"Invalid URL ({method} {parts.path[:200]})")
        path = path[len(prefix) - 1 :]
        if self.flavor == "openai" and path.startswith("/agents/"):
            query = parse_qs(parts.query, keep_blank_values=True)
            return self._sessions_api.route(method, path, query, headers,
                                            lambda items: self._injector.corrupt_items(self.faults, items))
        for route_method, pattern, fn in self._routes:
            match = pattern.match(path)
            if match is None or route_method != method:
                continue
            query = parse_qs(parts.query, keep_blank_values=True)
            if path.startswith(("/responses", "/openai/v1/")):  # the Responses API: no beta header, no api-version
                return fn(_Request(match.groupdict(), query, self._json_body(method, raw_body)))
            if self.flavor == "foundry":
                self._check_api_version(query)
                return fn(_Request(match.groupdict(), query, self._json_body(method, raw_body)))
            beta = headers.get("OpenAI-Beta") or ""
            if "assistants=v2" not in beta.replace(" ", ""):
                raise ApiError(
                    400,
                    "You must provide the 'OpenAI-Beta' header to access the Assistants API. "
                    "Please try again by setting the header 'OpenAI-Beta: assistants=v2'.",
                    code="invalid_beta",
                )
            # api-version (Azure) and any other unknown query parameter are ignored.
            return fn(_Request(match.groupdict(), query, self._json_body(method, raw_body)))
        raise ApiError(404, f"Invalid URL ({method} {parts.path[:200]})")

    def _langgraph_response(self, method: str, target: str, raw_body: bytes) -> _Response:
        try:
            status, body = self.langgraph.handle(method, target, raw_body,
                                                 lambda items: self._injector.corrupt_items(self.faults, items))
        except ApiError as err:
            return _Response.error(err)
        return _Response(status, body, truncate=status == 200 and self._injector.should_truncate(self.faults))

    @staticmethod
    def _check_api_version(query: dict[str, list[str]]) -> None:
        version = (query.get("api-version") or [""])[-1]
        if version not in FOUNDRY_API_VERSIONS:
            shown = f"'{version[:40]}'" if version else "missing"
            raise ApiError(
                400,
                f"api-version is {shown}; supported: {', '.join(FOUNDRY_API_VERSIONS)}.",
                param="api-version",
                code="UnsupportedApiVersion" if version else "MissingApiVersion",
            )

    @staticmethod
    def _json_body(method: str, raw: bytes) -> dict[str, Any]:
        if method != "POST" or not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly.)",
            )
        return body

    def _error_response(self, status: int, retry_after_ms: int | None) -> _Response:
        if status == 429:
            err = ApiError(
                429,
                "Rate limit reached for requests. Please try again later.",
                type_="requests",
                code="rate_limit_exceeded",
            )
            response = _Response.error(err)
            ms = retry_after_ms if retry_after_ms is not None else 1000
            response.headers["retry-after"] = str(max(1, math.ceil(ms / 1000)))
            response.headers["retry-after-ms"] = str(ms)
            return response
        message, type_ = _SERVER_ERRORS.get(status, (f"Simulated error {status}.", "server_error"))
        return _Response.error(ApiError(status, message, type_=type_))

    @staticmethod
    def _with_rate_headers(response: _Response, state: RateLimitState | None) -> _Response:
        response.headers.update(Simulator._rate_headers(state))
        return response

    @staticmethod
    def _rate_headers(state: RateLimitState | None) -> dict[str, str]:
        if state is None:  # a request that took no token (forced or unauthenticated); a full bucket
            return {
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-remaining-requests": "10000",
                "x-ratelimit-reset-requests": "0ms",
            }
        return {
            "x-ratelimit-limit-requests": str(state.limit),
            "x-ratelimit-remaining-requests": str(state.remaining),
            "x-ratelimit-reset-requests": format_duration(state.reset_seconds),
        }


class _Response:
    def __init__(self, status: int, body: JSON | list[Any] | None, truncate: bool = False,
                 stream: Iterator[bytes] | None = None) -> None:
        self.status = status
        self.body = body
        self.truncate = truncate
        self.stream = stream  # text/event-stream frames, written as they come; the connection closes after
        self.headers: dict[str, str] = {}

    @classmethod
    def error(cls, err: ApiError) -> _Response:
        return cls(err.status, err.body())

    def encode(self) -> bytes:
        if self.body is None:
            return b""  # 202 Accepted, no content
        data = json.dumps(self.body, separators=(",", ":")).encode()
        # A truncated body is still sent with a matching Content-Length: the JSON is broken, not the HTTP.
        return data[: len(data) // 2] if self.truncate else data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: Simulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that disconnects mid-request (killed, timed out) is normal for an API server, not a
        # traceback on stderr; anything else still is.
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect from the real API
    server_version = "assistants-simulator"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are dropped eventually
    # Headers and body leave in one segment; otherwise Nagle + delayed ACK add ~40 ms per request.
    wbufsize = -1
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and demos do not want a line per request

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        started = time.monotonic()
        try:
            response = self.server.simulator.handle(method, self.path, self.headers, raw)
        except Exception:  # a bug must still answer in the API's shape, not drop the connection
            _log.exception("simulator request failed: %s %s", method, self.path.split("?")[0])
            response = _Response.error(ApiError(500, "Internal simulator error.", type_="server_error"))
        if response.stream is not None:
            self._serve_stream(response)
            return
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-processing-ms", str(int((time.monotonic() - started) * 1000)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _serve_stream(self, response: _Response) -> None:
        """An event stream: no length, written frame by frame, then the connection closes (its end)."""
        assert response.stream is not None
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
            for chunk in response.stream:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: the stream ends
        finally:
            close = getattr(response.stream, "close", None)
            if callable(close):
                close()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")
