"""Poller for the Assistants v2 runs listing: GET {base}/threads/{thread_id}/runs.

The HTTP side (auth, concurrency, rate limits, retries, paging) is the shared client in
exporter/sources/http.py; this module says where the runs of a thread are and how to read them.
"""

from __future__ import annotations

from exporter.model import SOURCE_THREADS as SOURCE_THREADS
from exporter.model import ParseResult, RunSnapshot, parse_run
from exporter.sources.http import (
    ApiClient,
    ApiSettings,
    backoff_delay,
    build_headers,
    parse_remaining,
    parse_retry_after,
)
from exporter.sources.listing import ListPage, parse_list, read_runs

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
