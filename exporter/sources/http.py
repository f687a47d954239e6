"""The HTTP client every API source shares: GET listing pages of an OpenAI-style API.

One shared httpx.AsyncClient (keep-alive), a semaphore bounding requests in flight, a token
bucket bounding requests per second, retries with full-jitter backoff for 5xx and transport
failures, and a client-wide pause on 429. Never raises for network or input problems.
Subclasses say which `OpenAI-Beta` header they send and how list items become run snapshots. What it sends
and how it reads the API's answers (settings, headers, retry hints, backoff) is in api.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx

from exporter.model import ParseResult, RunSnapshot, thread_id_problem
from exporter.sources import PollResult, RequestHook, StopRule
from exporter.sources.api import (
    ApiSettings,
    attempts_text,
    backoff_delay,
    build_headers,
    parse_remaining,
    parse_retry_after,
    status_error,
)
from exporter.sources.credentials import TokenUnavailable
from exporter.sources.listing import Listed, OnPage, ParseItem, add_counts, page_through, read_runs
from exporter.sources.ratelimit import TokenBucket
from exporter.sources.transport import NoCookies, Params, Urls, release
from exporter.sources.transport import transport as fast_transport

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # 100 runs are ~0.5 MB; anything far larger is not a runs page
STALL_AFTER = 5.0  # seconds a request may go unanswered (and nothing else answered) before the API counts as down


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
class Got:
    """One object fetched by path: its body, or gone (404), or a secret-free error."""

    body: bytes | None
    gone: bool
    api_reached: bool
    error: str | None


@dataclass(slots=True)
class _Fetch:
    """A page request after retries: the final 2xx reply, or why there is none."""

    reply: _Reply | None
    error: str | None
    api_reached: bool
    gone: bool = False  # 404: the thread no longer exists


def collect_into(result: PollResult, stop: StopRule) -> OnPage[RunSnapshot]:
    """A pager's on_page for a poll: the runs go into `result`; paging stops once `stop` says the rest is
    known."""
    def on_page(runs: list[RunSnapshot]) -> bool:
        result.runs.extend(runs)
        return stop(result.runs)
    return on_page


class ApiClient:
    """Requests to one API: auth, concurrency, rate limits and retries, and paging through one listing."""

    beta = "assistants=v2"  # the OpenAI-Beta header sent with every request

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
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        # Burst of one wave of concurrent requests, then the steady rate.
        self._bucket = TokenBucket(
            settings.max_requests_per_second,
            max(1.0, float(settings.max_concurrency)),
            clock,
            sleep,
        )
        self._client: httpx.AsyncClient | None = None
        self._urls = Urls()
        self._sent: dict[int, float] = {}  # requests waiting for an answer: id -> when sent (clock)
        self._next_request = 0
        self._last_answer = float("-inf")  # when an HTTP answer last came back (clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings!r})"

    @property
    def bucket(self) -> TokenBucket:
        return self._bucket

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # A listing source names where a scope's items are listed ("/threads/{}/runs"), how one is read, the
    # endpoint label of those requests and what a scope is called in logs; poll() does the rest.
    list_path = ""
    list_endpoint = ""
    scope_kind = "scope"

    @staticmethod
    def parse_item(item: object, scope: str) -> ParseResult:
        raise NotImplementedError

    async def poll(self, scope: str, stop: StopRule) -> PollResult:
        """One listing of one scope: every page until `stop` says the rest is known. Never raises."""
        started = self._clock()
        result = PollResult(scope=scope, outcome="ok", started=started)
        problem = thread_id_problem(scope)
        if problem is not None:
            result.outcome, result.error = "error", problem
        else:
            await self.list_items(scope, stop, result)
        result.duration = max(0.0, self._clock() - started)
        return result

    async def list_items(self, scope: str, stop: StopRule, result: PollResult) -> None:
        """One scope's items into `result`, by cursor pages; an API that pages otherwise overrides this."""
        path = self.list_path.format(quote(scope, safe=""))
        await self.list_scope(path, scope, stop, result, self.parse_item, self.list_endpoint, self.scope_kind)

    async def list_scope(self, path: str, scope: str, stop: StopRule, result: PollResult, parse_item: ParseItem,
                         endpoint: str, what: str) -> None:
        """Page through GET {base}{path} newest first until `stop` says the rest is known, into `result`."""
        url = self._settings.base_url.rstrip("/") + path

        async def fetch(after: str | None) -> bytes | None:
            return await self.poll_page(result, url, self._params(after), f"{what} {scope!r}", endpoint)

        listed = await page_through(fetch, read_runs(parse_item, scope), collect_into(result, stop),
                                    max_pages=self._settings.max_pages)
        self.listing_ended(result, listed, what, scope)

    async def poll_page(self, result: PollResult, url: str, params: Params, what: str, endpoint: str,
                        ) -> bytes | None:
        """One page of a poll: its body (empty when it passed MAX_BODY_BYTES: a malformed page), or None with
        the poll's outcome and error set."""
        fetch = await self._fetch(url, params, what, endpoint)
        result.api_reached = result.api_reached or fetch.api_reached
        if fetch.reply is None:
            result.outcome = "gone" if fetch.gone else "error"
            result.error = fetch.error
            return None
        return b"" if fetch.reply.too_large else fetch.reply.body

    def listing_ended(self, result: PollResult, listed: Listed, what: str, scope: str) -> None:
        """What a pager's end makes of the poll: complete at the list's end; an error on a malformed page or a
        repeated cursor; what was read counts after max_pages, the rest waits."""
        add_counts(result.invalid, listed.invalid)
        if listed.stopped == "end":
            result.complete = True
        elif listed.stopped in ("malformed", "loop"):
            result.outcome, result.error = "error", "malformed page"
        elif listed.stopped == "max_pages":
            logger.warning("%s %r: stopped after %d pages", what, scope, self._settings.max_pages)

    async def get_page(self, path: str, params: dict[str, str], endpoint: str) -> bytes | None:
        """GET {base}{path} with paging `params` (api-version added), retried like a runs page; the body of a
        2xx answer (empty when it passed MAX_BODY_BYTES: a malformed page), or None. For other listings than
        runs: threads, sessions, responses (discovery)."""
        if self._settings.api_version:
            params = {**params, "api-version": self._settings.api_version}
        return await self._listing_page(path, params, endpoint)

    async def post_page(self, path: str, body: bytes, endpoint: str) -> bytes | None:
        """POST {base}{path} with a JSON `body` that only reads (LangGraph's searches), retried like a runs page;
        the body of a 2xx answer (empty when it passed MAX_BODY_BYTES: a malformed page), or None."""
        return await self._listing_page(path, {}, endpoint, body)

    async def _listing_page(self, path: str, params: Params, endpoint: str, json_body: bytes | None = None,
                            ) -> bytes | None:
        fetch = await self._fetch(self._settings.base_url.rstrip("/") + path, params, path, endpoint, json_body)
        self.last_reached = fetch.api_reached
        if fetch.reply is None:
            return None
        return b"" if fetch.reply.too_large else fetch.reply.body

    async def get_object(self, path: str, endpoint: str) -> Got:
        """GET {base}{path} (api-version added), retried like a runs page: one object by id (a response)."""
        params = {"api-version": self._settings.api_version} if self._settings.api_version else {}
        fetch = await self._fetch(self._settings.base_url.rstrip("/") + path, params, path, endpoint)
        body = None if fetch.reply is None or fetch.reply.too_large else fetch.reply.body
        error = fetch.error or ("body too large" if fetch.reply is not None and fetch.reply.too_large else None)
        return Got(body, fetch.gone, fetch.api_reached, error)

    def stream_client(self, connections: int) -> httpx.AsyncClient:
        """A client of its own for long-lived event streams (the polls' pool must not be held by them): the
        same headers, auth and transport settings, no overall timeout (the reader bounds each read)."""
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
        headers = {**build_headers(self._settings, self.beta), "Accept": "text/event-stream"}
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self._settings.timeout, read=None),
                                 limits=limits, transport=self._transport or fast_transport(limits),
                                 cookies=NoCookies(), auth=self._auth, follow_redirects=False)

    def url(self, path: str) -> httpx.URL:
        """{base}{path}, with api-version when set."""
        return self._urls.get(self._settings.base_url.rstrip("/") + path,
                              {"api-version": self._settings.api_version} if self._settings.api_version else {})

    def report(self, endpoint: str, code: str) -> None:
        """Count one request made outside get_page (an event stream): api_requests_total{endpoint, code}."""
        self._report(endpoint, code)

    def stalled(self) -> bool:
        """True when a request has gone unanswered for STALL_AFTER (or its timeout, if shorter) and no other
        answer came back since it was sent: the API hangs. Waits for the client's own rate limit or a 429
        pause do not count (those requests are not sent yet)."""
        horizon = self._clock() - min(STALL_AFTER, self._settings.timeout)
        return any(self._last_answer < sent <= horizon for sent in self._sent.values())

    async def _fetch(self, url: str, params: Params, what: str, endpoint: str, json_body: bytes | None = None,
                     ) -> _Fetch:
        """One page, retrying 429, 5xx and transport failures up to max_attempts, within the deadline. With a
        `json_body` it is POSTed (a search: reading, so retrying is safe)."""
        attempts = self._settings.max_attempts
        reached = False
        error = "no attempt made"
        spent = 0.0  # on attempts and backoffs: the deadline's budget
        for attempt in range(1, attempts + 1):
            budget = self._settings.deadline - spent
            if budget <= 0:
                error += f", deadline of {self._settings.deadline:g}s reached"
                break
            async with self._semaphore:
                await self._bucket.acquire()  # waits out any 429 pause, for every caller
                began = self._clock()
                outcome = await self._attempt(url, params, min(self._settings.timeout, budget), json_body)
                spent += self._clock() - began
            if isinstance(outcome, _Failure) and outcome.code == "token_unavailable":
                return _Fetch(None, f"no token: {outcome.kind}", api_reached=False)  # no request was sent
            if isinstance(outcome, _Failure):
                self._report(endpoint, outcome.code)
                error = f"{outcome.code.replace('_', ' ')} ({outcome.kind}) after {attempts_text(attempt)}"
                if attempt < attempts:
                    spent += await self._backoff(attempt, what, outcome.code, self._settings.deadline - spent)
                continue
            status = outcome.status
            self._report(endpoint, str(status))
            self._report_remaining(outcome.headers)
            if 200 <= status < 300:
                self._bucket.recover()
                return _Fetch(outcome, None, api_reached=True)
            if status == 404:
                return _Fetch(None, None, api_reached=True, gone=True)
            error = status_error(status, attempt)
            if status == 429:
                reached = True
                self._pause(parse_retry_after(outcome.headers), what)
                continue  # no backoff of our own: the next acquire() waits out the pause
            if status >= 500 and attempt < attempts:
                spent += await self._backoff(attempt, what, str(status), self._settings.deadline - spent)
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

    async def _attempt(self, url: str, params: Params, timeout: float, json_body: bytes | None = None,
                       ) -> _Reply | _Failure:
        """One HTTP exchange, body included, within `timeout`."""
        client = self._get_client()
        self._next_request += 1
        request_id = self._next_request
        self._sent[request_id] = self._clock()
        try:
            async with asyncio.timeout(timeout):
                if json_body is None:
                    request = client.build_request("GET", self._urls.get(url, params), timeout=timeout)
                else:
                    request = client.build_request("POST", self._urls.get(url, params), content=json_body,
                                                   headers={"Content-Type": "application/json"}, timeout=timeout)
                response = await client.send(request, stream=True)
                self._last_answer = self._clock()
                try:
                    body, too_large = await _read_capped(response)
                finally:
                    await response.aclose()
                    release(response)
        except (httpx.TimeoutException, TimeoutError) as exc:
            return _Failure("timeout", type(exc).__name__)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return _Failure("connection_error", type(exc).__name__)
        except TokenUnavailable as exc:  # the credential could not give a token: an outage, not a crash
            return _Failure("token_unavailable", str(exc))
        finally:
            del self._sent[request_id]
        return _Reply(response.status_code, response.headers, body, too_large)

    def request_headers(self) -> dict[str, str]:
        """The headers of every request: the OpenAI ones; an API of another kind overrides this."""
        return build_headers(self._settings, self.beta)

    def _get_client(self) -> httpx.AsyncClient:
        # Created on first use so it belongs to the running event loop.
        if self._client is None:
            n = self._settings.max_concurrency
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            self._client = httpx.AsyncClient(
                headers=self.request_headers(),
                timeout=httpx.Timeout(self._settings.timeout),
                limits=limits,
                transport=self._transport or fast_transport(limits),
                cookies=NoCookies(),
                auth=self._auth,
                follow_redirects=False,  # a redirect must not carry the api-key header elsewhere
            )
        return self._client

    def _pause(self, delay: float, what: str) -> None:
        logger.debug("%s: 429, pausing all requests for %.3fs", what, delay)
        self._bucket.pause_until(self._clock() + delay)
        self._bucket.slow_down()

    async def _backoff(self, attempt: int, what: str, code: str, budget: float) -> float:
        """Sleep before the next attempt (no longer than what is left of the deadline); the time slept."""
        if budget <= 0:
            return 0.0  # no next attempt
        delay = min(backoff_delay(attempt, self._rng), max(0.0, budget))
        logger.debug("%s: %s on attempt %d, retrying in %.3fs", what, code, attempt, delay)
        began = self._clock()
        await self._sleep(delay)
        return max(delay, self._clock() - began)

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
