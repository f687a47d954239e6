"""Poller for the Assistants v2 runs listing: GET {base}/threads/{thread_id}/runs.

One shared httpx.AsyncClient (keep-alive), a semaphore bounding requests in flight, a token
bucket bounding requests per second, retries with full-jitter backoff for 5xx and transport
failures, and a client-wide pause on 429. Never raises for network or input problems.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx

from exporter import __version__
from exporter.model import REASON_MALFORMED_PAGE, SOURCE_THREADS, RunSnapshot, parse_run, thread_id_problem
from exporter.sources import PollResult, RequestHook, StopRule
from exporter.sources.credentials import TokenUnavailable
from exporter.sources.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

ENDPOINT = "list_runs"
USER_AGENT = f"assistants-exporter/{__version__}"

BACKOFF_BASE = 0.5  # seconds; attempt n waits uniform(0, min(cap, base * 2**(n-1)))
BACKOFF_CAP = 8.0
RETRY_AFTER_DEFAULT = 1.0  # when a 429 carries no usable hint
RETRY_AFTER_CAP = 60.0  # a hostile or buggy hint must not stall the exporter for hours
MAX_BODY_BYTES = 16 * 1024 * 1024  # 100 runs are ~0.5 MB; anything far larger is not a runs page

_DIGITS = re.compile(r"[0-9]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the API. `api_key` is kept out of repr and never logged."""

    base_url: str  # up to and including /v1 (or Azure's .../openai)
    api_key: str = field(repr=False)
    auth_header: Literal["bearer", "api-key"] = "bearer"
    api_version: str | None = None  # Azure: ?api-version=V on every request
    organization: str | None = None
    project: str | None = None
    max_concurrency: int = 8
    max_requests_per_second: float = 10.0
    timeout: float = 10.0  # per attempt: connect + send + whole body
    page_limit: int = 100
    max_attempts: int = 3  # per request, for 5xx/timeout/connection errors and 429
    max_pages: int = 1000  # per poll; a listing that never ends must not loop forever

    def __post_init__(self) -> None:
        # Messages name the field, never its value: a misplaced key must not end up in a log.
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        for name in ("api_key", "organization", "project"):
            value = getattr(self, name)
            if value and not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"{name} must be printable ASCII (it is sent as a header)")
        if self.auth_header not in ("bearer", "api-key"):
            raise ValueError("auth_header must be 'bearer' or 'api-key'")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not (math.isfinite(self.max_requests_per_second) and self.max_requests_per_second > 0):
            raise ValueError("max_requests_per_second must be > 0")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError("timeout must be > 0")
        if not 1 <= self.page_limit <= 100:
            raise ValueError("page_limit must be between 1 and 100")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_pages < 1:
            raise ValueError("max_pages must be >= 1")


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    too_large: bool = False


@dataclass(frozen=True, slots=True)
class _Failure:
    code: Literal["timeout", "connection_error", "token_unavailable"]
    kind: str  # exception class name (or the credential's one-line, token-free reason): no URLs, no headers


@dataclass(slots=True)
class _Fetch:
    """A page request after retries: the final 2xx reply, or why there is none."""

    reply: _Reply | None
    error: str | None
    api_reached: bool
    gone: bool = False  # 404: the thread no longer exists


@dataclass(slots=True)
class _Page:
    runs: list[RunSnapshot]
    invalid: dict[str, int]
    has_more: bool
    last_id: str | None


def build_headers(settings: ApiSettings) -> dict[str, str]:
    headers = {
        "OpenAI-Beta": "assistants=v2",
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
    }
    if not settings.api_key:
        pass  # e.g. a local simulator: send no credentials at all
    elif settings.auth_header == "api-key":
        headers["api-key"] = settings.api_key
    else:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    if settings.organization:
        headers["OpenAI-Organization"] = settings.organization
    if settings.project:
        headers["OpenAI-Project"] = settings.project
    return headers


def parse_retry_after(headers: httpx.Headers) -> float:
    """Seconds to wait after a 429: retry-after-ms, then retry-after (numeric only), else 1 s; capped."""
    ms = _non_negative(headers.get("retry-after-ms"))
    if ms is not None:
        return min(ms / 1000.0, RETRY_AFTER_CAP)
    seconds = _non_negative(headers.get("retry-after"))
    if seconds is not None:
        return min(seconds, RETRY_AFTER_CAP)
    return RETRY_AFTER_DEFAULT  # absent, an HTTP-date, or garbage


def _non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_remaining(headers: httpx.Headers) -> int | None:
    raw = headers.get("x-ratelimit-remaining-requests")
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if _DIGITS.fullmatch(raw) else None


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt - 1, 30))
    return rng.uniform(0.0, ceiling)


def parse_page(body: bytes, thread_id: str) -> _Page | None:
    """Validate one listing page; None when it is malformed as a whole."""
    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, truncated, bad UTF-8, absurdly nested
        return None
    if not isinstance(obj, dict):
        return None
    data = obj.get("data")
    if not isinstance(data, list):
        return None
    has_more = obj.get("has_more", False)  # some compatible servers omit it on the last page
    if not isinstance(has_more, bool):
        return None
    last_id = obj.get("last_id")
    if has_more and (not isinstance(last_id, str) or not last_id):
        return None  # we could not ask for the next page
    cursor = last_id if isinstance(last_id, str) else None
    page = _Page(runs=[], invalid={}, has_more=has_more, last_id=cursor)
    for item in data:
        parsed = parse_run(item, thread_id)
        if parsed.invalid_reason is not None:
            page.invalid[parsed.invalid_reason] = page.invalid.get(parsed.invalid_reason, 0) + 1
        if parsed.snapshot is not None:
            page.runs.append(parsed.snapshot)
    return page


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for reason, count in more.items():
        into[reason] = into.get(reason, 0) + count


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _status_error(status: int, attempts: int) -> str:
    if status in (401, 403):
        return f"authentication failed ({status})"
    if status == 429:
        return f"rate limited (429) after {_attempts(attempts)}"
    if status >= 500:
        return f"server error ({status}) after {_attempts(attempts)}"
    return f"unexpected status {status}"


class AssistantsSource:
    """Lists the runs of one thread at a time, newest first, for the tracker."""

    name = SOURCE_THREADS

    def __init__(
        self,
        settings: ApiSettings,
        *,
        on_request: RequestHook | None = None,
        on_rate_limit_remaining: Callable[[int], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._on_request = on_request
        self._on_remaining = on_rate_limit_remaining
        self._transport = transport
        self._auth = auth  # Entra ID tokens (--credential azure); else the key is a default header
        self.last_reached = False  # whether the last get_page reached the API
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._runs_url = settings.base_url.rstrip("/") + "/threads/{}/runs"
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        # Burst of one wave of concurrent requests, then the steady rate.
        self._bucket = TokenBucket(
            settings.max_requests_per_second,
            max(1.0, float(settings.max_concurrency)),
            clock,
            sleep,
        )
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"AssistantsSource({self._settings!r})"

    @property
    def bucket(self) -> TokenBucket:
        return self._bucket

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def poll(self, thread_id: str, stop: StopRule) -> PollResult:
        started = self._clock()
        result = PollResult(scope=thread_id, outcome="ok", started=started)
        problem = thread_id_problem(thread_id)
        if problem is not None:
            result.outcome, result.error = "error", problem
        else:
            await self._list_runs(thread_id, stop, result)
        result.duration = max(0.0, self._clock() - started)
        return result

    async def _list_runs(self, thread_id: str, stop: StopRule, result: PollResult) -> None:
        url = self._runs_url.format(quote(thread_id, safe=""))
        cursors: set[str] = set()
        after: str | None = None
        for _ in range(self._settings.max_pages):
            fetch = await self._fetch(url, self._params(after), f"thread {thread_id!r}", ENDPOINT)
            result.api_reached = result.api_reached or fetch.api_reached
            if fetch.reply is None:
                result.outcome = "gone" if fetch.gone else "error"
                result.error = fetch.error
                return
            page = None if fetch.reply.too_large else parse_page(fetch.reply.body, thread_id)
            if page is None or (page.has_more and page.last_id in cursors):
                result.invalid[REASON_MALFORMED_PAGE] = result.invalid.get(REASON_MALFORMED_PAGE, 0) + 1
                result.outcome, result.error = "error", "malformed page"
                return
            result.runs.extend(page.runs)
            _add_counts(result.invalid, page.invalid)
            stop_now = stop(result.runs)
            if not page.has_more:
                result.complete = True
                return
            if stop_now:
                return
            assert page.last_id is not None  # parse_page guarantees a cursor when has_more
            cursors.add(page.last_id)
            after = page.last_id
        logger.warning("thread %r: stopped after %d pages", thread_id, self._settings.max_pages)

    async def get_page(self, path: str, params: dict[str, str], endpoint: str) -> bytes | None:
        """GET {base}{path} with paging `params` (api-version added), retried like a runs page; the body of a
        2xx answer, or None. For other listings than runs: threads (discovery)."""
        if self._settings.api_version:
            params = {**params, "api-version": self._settings.api_version}
        fetch = await self._fetch(self._settings.base_url.rstrip("/") + path, params, path, endpoint)
        self.last_reached = fetch.api_reached
        return None if fetch.reply is None or fetch.reply.too_large else fetch.reply.body

    async def _fetch(self, url: str, params: dict[str, str], what: str, endpoint: str) -> _Fetch:
        """One page, retrying 429, 5xx and transport failures up to max_attempts."""
        attempts = self._settings.max_attempts
        reached = False
        error = "no attempt made"
        for attempt in range(1, attempts + 1):
            async with self._semaphore:
                await self._bucket.acquire()  # waits out any 429 pause, for every caller
                outcome = await self._attempt(url, params)
            if isinstance(outcome, _Failure) and outcome.code == "token_unavailable":
                return _Fetch(None, f"no token: {outcome.kind}", api_reached=False)  # no request was sent
            if isinstance(outcome, _Failure):
                self._report(endpoint, outcome.code)
                error = f"{outcome.code.replace('_', ' ')} ({outcome.kind}) after {_attempts(attempt)}"
                if attempt < attempts:
                    await self._backoff(attempt, what, outcome.code)
                continue
            status = outcome.status
            self._report(endpoint, str(status))
            self._report_remaining(outcome.headers)
            if 200 <= status < 300:
                self._bucket.recover()
                return _Fetch(outcome, None, api_reached=True)
            if status == 404:
                return _Fetch(None, None, api_reached=True, gone=True)
            error = _status_error(status, attempt)
            if status == 429:
                reached = True
                self._pause(parse_retry_after(outcome.headers), what)
                continue  # no backoff of our own: the next acquire() waits out the pause
            if status >= 500 and attempt < attempts:
                await self._backoff(attempt, what, str(status))
                continue
            break  # other 4xx (and 3xx, 1xx): retrying will not help
        return _Fetch(None, error, api_reached=reached)

    def _params(self, after: str | None) -> dict[str, str]:
        params = {"order": "desc", "limit": str(self._settings.page_limit)}
        if after is not None:
            params["after"] = after
        if self._settings.api_version:
            params["api-version"] = self._settings.api_version
        return params

    async def _attempt(self, url: str, params: dict[str, str]) -> _Reply | _Failure:
        """One HTTP exchange, body included, within `timeout`."""
        client = self._get_client()
        try:
            async with asyncio.timeout(self._settings.timeout):
                request = client.build_request("GET", url, params=params)
                response = await client.send(request, stream=True)
                try:
                    body, too_large = await _read_capped(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError) as exc:
            return _Failure("timeout", type(exc).__name__)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return _Failure("connection_error", type(exc).__name__)
        except TokenUnavailable as exc:  # the credential could not give a token: an outage, not a crash
            return _Failure("token_unavailable", str(exc))
        return _Reply(response.status_code, response.headers, body, too_large)

    def _get_client(self) -> httpx.AsyncClient:
        # Created on first use so it belongs to the running event loop.
        if self._client is None:
            n = self._settings.max_concurrency
            self._client = httpx.AsyncClient(
                headers=build_headers(self._settings),
                timeout=httpx.Timeout(self._settings.timeout),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                transport=self._transport,
                auth=self._auth,
                follow_redirects=False,  # a redirect must not carry the api-key header elsewhere
            )
        return self._client

    def _pause(self, delay: float, what: str) -> None:
        logger.debug("%s: 429, pausing all requests for %.3fs", what, delay)
        self._bucket.pause_until(self._clock() + delay)
        self._bucket.slow_down()

    async def _backoff(self, attempt: int, what: str, code: str) -> None:
        delay = backoff_delay(attempt, self._rng)
        logger.debug("%s: %s on attempt %d, retrying in %.3fs", what, code, attempt, delay)
        await self._sleep(delay)

    def _report(self, endpoint: str, code: str) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(endpoint, code)
        except Exception:  # a metrics hook must not break polling
            logger.exception("on_request hook failed")

    def _report_remaining(self, headers: httpx.Headers) -> None:
        remaining = parse_remaining(headers)
        if remaining is None or self._on_remaining is None:
            return
        try:
            self._on_remaining(remaining)
        except Exception:  # a metrics hook must not break polling
            logger.exception("on_rate_limit_remaining hook failed")


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """The (decoded) body and False, or nothing and True once it passes MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False
