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
from exporter.model import (
    REASON_MALFORMED_PAGE,
    REASON_WRONG_TYPE,
    SOURCE_RESPONSES,
    parse_response,
    thread_id_problem,
)
from exporter.sources import DiscoveryResult, FetchResult
from exporter.sources.foundry import ThreadItem, discover_threads
from exporter.sources.http import ApiClient, Got
from exporter.sources.listing import ListPage, add_counts, parse_list
from exporter.sources.spec import Built, CheckContext, SourceContext, SourceSpec

GET_RESPONSE = "get_response"  # api_requests_total{endpoint}
LIST_RESPONSES = "list_responses"


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
        stopped: list[str] = []
        for agent in self.agents or (None,):
            async def fetch_page(params: dict[str, str], agent: str | None = agent) -> bytes | None:
                if agent is not None:
                    params = {**params, "agent_name": agent}
                body = await self.client.get_page("/responses", params, LIST_RESPONSES)
                result.api_reached = result.api_reached or body is not None
                return body

            # Always down to the first known response: ids leave the watch list once terminal, not by age.
            found = await discover_threads(fetch_page, is_known, since, read_item=read_response_item)
            result.scopes.extend((r.id, r.created_at) for r in found.threads)
            add_counts(result.invalid, found.invalid)
            if not found.finished:
                stopped.append(found.stopped)
        if stopped:
            result.error = f"response discovery stopped early ({', '.join(stopped)})"
        return result


def read_response_item(obj: object) -> tuple[ThreadItem | None, str | None]:
    """One item of the response listing: its id and creation time, or the reason it is skipped. Its status is
    not judged here: the fetch by id does that."""
    parsed = parse_response(obj, SOURCE_RESPONSES)
    if parsed.snapshot is None:
        return None, parsed.invalid_reason or REASON_WRONG_TYPE
    if response_id_problem(parsed.snapshot.id) is not None:
        return None, REASON_WRONG_TYPE  # the id goes into a URL path
    return ThreadItem(parsed.snapshot.id, parsed.snapshot.created_at), None


def parse_responses_page(body: bytes) -> ListPage[ThreadItem] | None:
    """One page of the response listing; None when it is malformed."""
    return parse_list(body, read_response_item, follow_last_id=True)


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
