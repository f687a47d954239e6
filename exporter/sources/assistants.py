"""Poller for the Assistants v2 runs listing: GET {base}/threads/{thread_id}/runs.

The HTTP side (auth, concurrency, rate limits, retries, paging) is the shared client in
exporter/sources/http.py; this module says where the runs of a thread are and how to read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.flags import ConfigError, option
from exporter.model import SOURCE_THREADS as SOURCE_THREADS
from exporter.model import ParseResult, RunSnapshot, parse_run
from exporter.sources.api import (
    ApiSettings,
    backoff_delay,
    build_headers,
    parse_remaining,
    parse_retry_after,
)
from exporter.sources.http import ApiClient
from exporter.sources.listing import ListPage, parse_list, read_runs
from exporter.sources.spec import Built, CheckContext, SourceContext, SourceSpec

__all__ = [
    "ApiSettings",
    "AssistantsSource",
    "backoff_delay",
    "build_headers",
    "parse_page",
    "parse_remaining",
    "parse_retry_after",
]

ENDPOINT = "list_runs"
# --discover-threads belongs to this source and to langgraph (exporter/sources/langgraph.py) alike.
DISCOVER_THREADS_HELP = ("List the API's threads and watch the new ones: GET {api-base}/threads (Azure AI Foundry) "
                         "with --source threads, POST {api-base}/threads/search with --source langgraph.")


def _parse_run(item: object, scope: str) -> ParseResult:
    return parse_run(item, scope)


def parse_page(body: bytes, thread_id: str) -> ListPage[RunSnapshot] | None:
    """Validate one runs listing page; None when it is malformed as a whole."""
    return parse_list(body, read_runs(_parse_run, thread_id))


class AssistantsSource(ApiClient):
    """Lists the runs of one thread at a time, newest first, for the tracker."""

    name = SOURCE_THREADS
    beta = "assistants=v2"
    list_path = "/threads/{}/runs"
    list_endpoint = ENDPOINT
    scope_kind = "thread"
    parse_item = staticmethod(_parse_run)


@dataclass(frozen=True, slots=True)
class ThreadsOptions:
    discover_threads: bool = option("--discover-threads", "bool", False, DISCOVER_THREADS_HELP)


def _check(ctx: CheckContext) -> None:
    if not (ctx.demo or ctx.has_scopes or ctx.has_push_tokens or ctx.options.discover_threads):
        raise ConfigError("--thread, --threads-file or --discover-threads is required (or a push token, to "
                          "register threads over the API; or run with --demo)")


def _build(ctx: SourceContext) -> Built:
    source = ctx.client(AssistantsSource)
    if not ctx.options.discover_threads:
        return Built(listing=source)
    from exporter.sources.foundry import ThreadDiscovery  # foundry builds on this module's client

    return Built(listing=source, discoveries=(ThreadDiscovery(source, ctx.lookback),))


SPEC = SourceSpec(SOURCE_THREADS, "poll threads", "required", ThreadsOptions, _check, _build, names_threads=True)
