"""The Responses API source: background responses polled by id, and Foundry's response listing.

OpenAI has no list endpoint for responses, so ids come from elsewhere (a push, a webhook, a registration,
or, on Azure AI Foundry's new agents, `GET {api-base}/responses`). Each known unfinished response is
fetched with `GET {api-base}/responses/{id}` every poll interval until it is terminal; a 404 ends it
uncounted (OpenAI keeps background responses retrievable for only about ten minutes after they finish).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from exporter.flags import ConfigError, option
from exporter.model import REASON_MALFORMED_PAGE, SOURCE_RESPONSES, parse_response, string_problem, thread_id_problem
from exporter.sources import DiscoveryResult, FetchResult
from exporter.sources.http import ApiClient, Got
from exporter.sources.spec import Built, CheckContext, SourceContext, SourceSpec

GET_RESPONSE = "get_response"  # api_requests_total{endpoint}
LIST_RESPONSES = "list_responses"
PAGE_LIMIT = 100
MAX_PAGES = 1000


class ObjectClient(Protocol):
    """The HTTP layer (AssistantsSource): auth, rate limits, retries and request metrics live there."""

    async def get_object(self, path: str, endpoint: str) -> Got: ...

    async def get_page(self, path: str, params: dict[str, str], endpoint: str) -> bytes | None: ...

    async def aclose(self) -> None: ...


def response_id_problem(response_id: str) -> str | None:
    """Why an id cannot be used in a URL path, or None. The same rules as thread ids."""
    return thread_id_problem(response_id)


class ResponsesSource:
    """A by-id source: one `GET /responses/{id}` per fetch."""

    name = SOURCE_RESPONSES

    def __init__(self, client: ObjectClient) -> None:
        self.client = client

    async def fetch(self, run_id: str) -> FetchResult:
        got = await self.client.get_object(f"/responses/{run_id}", GET_RESPONSE)
        if got.gone:
            return FetchResult(run_id, "gone", api_reached=True)
        if got.body is None:
            return FetchResult(run_id, "error", api_reached=got.api_reached, error=got.error)
        try:
            obj = json.loads(got.body)
        except (ValueError, RecursionError):
            return FetchResult(run_id, "error", invalid_reason=REASON_MALFORMED_PAGE, api_reached=True,
                               error="response body is not JSON")
        parsed = parse_response(obj, self.name)
        if parsed.snapshot is None or parsed.snapshot.id != run_id:
            reason = parsed.invalid_reason or REASON_MALFORMED_PAGE
            return FetchResult(run_id, "error", invalid_reason=reason, api_reached=True,
                               error=f"invalid response object ({reason})")
        return FetchResult(run_id, "ok", run=parsed.snapshot, invalid_reason=parsed.invalid_reason,
                           api_reached=True)

    async def aclose(self) -> None:
        await self.client.aclose()


class ResponseDiscovery:
    """Foundry's new agents: list `GET {api-base}/responses?order=desc&limit=100` newest first, down to the
    lookback or a response already known, optionally once per `agent_name`. Found ids are polled by id."""

    name = SOURCE_RESPONSES

    def __init__(self, client: ObjectClient, lookback: float, agents: tuple[str, ...] = (),
                 wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.lookback = lookback
        self.agents = agents
        self.wall = wall

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
        result = DiscoveryResult()
        since = self.wall() - self.lookback
        for agent in self.agents or (None,):
            params = {"order": "desc", "limit": str(PAGE_LIMIT)}
            if agent is not None:
                params["agent_name"] = agent
            await self._pass(params, since, is_known, result)
        return result

    async def _pass(self, params: dict[str, str], since: float, is_known: Callable[[str], bool],
                    result: DiscoveryResult) -> None:
        for _ in range(MAX_PAGES):
            body = await self.client.get_page("/responses", params, LIST_RESPONSES)
            if body is None:
                result.error = "listing responses failed"
                return
            result.api_reached = True
            page = _parse_page(body)
            if page is None:
                result.invalid[REASON_MALFORMED_PAGE] = result.invalid.get(REASON_MALFORMED_PAGE, 0) + 1
                return
            items, has_more, last_id = page
            for response_id, created_at, reason in items:
                if reason is not None:
                    result.invalid[reason] = result.invalid.get(reason, 0) + 1
                    continue
                if created_at < since or is_known(response_id):
                    return  # newest first: everything further down is older or known
                result.scopes.append((response_id, created_at))
            if not has_more or last_id is None:
                return
            params = {**params, "after": last_id}


def _parse_page(body: bytes) -> tuple[list[tuple[str, int, str | None]], bool, str | None] | None:
    """(id, created_at, invalid reason) items, has_more, last_id; None when the page is malformed."""
    try:
        page = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        return None
    items: list[tuple[str, int, str | None]] = []
    for obj in page["data"]:
        parsed = parse_response(obj, SOURCE_RESPONSES)
        snap = parsed.snapshot
        if snap is None or response_id_problem(snap.id) is not None:
            items.append(("", 0, parsed.invalid_reason or "wrong_type"))
        else:
            items.append((snap.id, snap.created_at, None))
    last_id = page.get("last_id")
    cursor = last_id if isinstance(last_id, str) and last_id and string_problem(last_id) is None else None
    return items, page.get("has_more") is True, cursor


@dataclass(frozen=True, slots=True)
class ResponsesOptions:
    discover_responses: bool = option(
        "--discover-responses", "bool", False,
        "List the API's responses (GET {api-base}/responses, Azure AI Foundry's new agents) down to "
        "--discover-lookback and poll the new ones; needs --source responses.")
    agents: tuple[str, ...] = option(
        "--agent", "list", (),
        "With --discover-responses: only this agent's responses (agent_name); repeatable (env: comma-separated; "
        "YAML: a list).", metavar="NAME", yaml_key_override="agents", repeat=True)


def _check(ctx: CheckContext) -> None:
    options: ResponsesOptions = ctx.options
    if options.discover_responses and not ctx.has_credentials:
        raise ConfigError("--discover-responses needs an API key (OPENAI_API_KEY or --api-key-file)")
    if options.agents and not options.discover_responses:
        raise ConfigError("--agent needs --discover-responses")


def _build(ctx: SourceContext) -> Built:
    """Responses are polled by id only when the API can be reached; without credentials the source only
    receives (pushes and webhooks)."""
    if not ctx.can_call_api:
        return Built()
    client = ctx.client(ApiClient)  # its own rate limit, and its requests under source="responses"
    options: ResponsesOptions = ctx.options
    found = (ResponseDiscovery(client, ctx.lookback, options.agents),) if options.discover_responses else ()
    return Built(by_id=ResponsesSource(client), discoveries=found)


SPEC = SourceSpec(SOURCE_RESPONSES, "poll Responses API background responses by id", "optional",
                  ResponsesOptions, _check, _build, receives=True)
