"""OpenAI Agents API (beta): sessions and their turns.

A session is a scope, polled like a thread: `GET {base}/agents/sessions/{id}/turns` newest first, under the
same stop rule, so a steady-state poll is one request. `SessionDiscovery` lists `GET {base}/agents/sessions`
newest first each pass, down to the lookback or the first session already known, once per `--agent-id`
(the API filters by one agent at a time). Every request carries `OpenAI-Beta: agents=v1`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.flags import id_list, option
from exporter.model import SOURCE_SESSIONS, ParseResult, parse_turn
from exporter.sources import DiscoveryResult
from exporter.sources.foundry import discover_threads
from exporter.sources.http import ApiClient
from exporter.sources.session_streams import StreamReader
from exporter.sources.spec import Built, LiveStreams, SourceContext, SourceSpec, WebhookScopes

LIST_TURNS = "list_turns"  # api_requests_total{endpoint}
LIST_SESSIONS = "list_sessions"


def _parse_turn(item: object, scope: str) -> ParseResult:
    return parse_turn(item, scope)


class SessionsSource(ApiClient):
    """Lists the turns of one session at a time, newest first, for the tracker; and opens the live event
    streams of the most recently active sessions (session_streams.py) when --session-streams allows."""

    name = SOURCE_SESSIONS
    beta = "agents=v1"
    list_path = "/agents/sessions/{}/turns"
    list_endpoint = LIST_TURNS
    scope_kind = "session"
    parse_item = staticmethod(_parse_turn)
    stream_limit = 0  # --session-streams
    stream_keepalive = 30.0  # --session-stream-keepalive

    def stream_reader(self) -> StreamReader:
        """A reader of session streams on a connection pool of their own, counted as this source's requests."""
        return StreamReader(lambda: self.stream_client(self.stream_limit), self.url, self.report, self.bucket.acquire,
                            self.stream_keepalive)


class SessionDiscovery:
    """Finds sessions for the `sessions` source: each pass lists them newest first down to the lookback or
    (once a pass has finished) the first one already known; one pass per agent filter."""

    name = SOURCE_SESSIONS

    def __init__(self, source: SessionsSource, lookback: float, agent_ids: Sequence[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.lookback = lookback
        self.agent_ids: tuple[str | None, ...] = tuple(dict.fromkeys(agent_ids)) or (None,)
        self.clock = clock
        # Per filter, as ThreadDiscovery: until a pass finishes, stopping at a known session could skip older
        # ones; after one, a pass stops at the first known session created before that pass began (less a
        # second: created_at is whole seconds).
        self.settled_before: dict[str | None, float | None] = dict.fromkeys(self.agent_ids)

    @property
    def filtered(self) -> bool:
        """Only some agents' sessions are listed (--agent-id)."""
        return self.agent_ids != (None,)

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
        result = DiscoveryResult()
        started = self.clock()
        since = started - self.lookback
        stopped: list[str] = []
        for agent_id in self.agent_ids:
            async def fetch_page(params: dict[str, str], agent_id: str | None = agent_id) -> bytes | None:
                if agent_id is not None:
                    params = {**params, "agent_id": agent_id}
                body = await self.source.get_page("/agents/sessions", params, LIST_SESSIONS)
                result.api_reached = result.api_reached or self.source.last_reached
                return body

            settled = self.settled_before[agent_id]
            found = await discover_threads(fetch_page, is_known, since, stop_at_known=settled is not None,
                                           stop_known_before=settled)
            if found.finished:
                self.settled_before[agent_id] = math.floor(started) - 1
            result.scopes.extend((s.id, s.created_at) for s in found.threads)
            for reason, count in found.invalid.items():
                result.invalid[reason] = result.invalid.get(reason, 0) + count
            if not found.finished:
                stopped.append(found.stopped)
        if stopped:
            result.error = f"session discovery stopped early ({', '.join(stopped)})"
        return result


@dataclass(frozen=True, slots=True)
class SessionsOptions:
    agent_ids: tuple[str, ...] = option(
        "--agent-id", "list", (),
        "With --source sessions, discover only the sessions of this agent; repeatable (env: comma-separated; "
        "YAML: a list).", metavar="ID", yaml_key_override="agent_ids", repeat=True, convert=id_list("agent id"))
    session_streams: int = option(
        "--session-streams", "int", 100,
        "With --source sessions, hold the live event streams of at most this many sessions with unfinished "
        "turns, most recently active first (their turns are then not polled); 0: poll only (0..10000).",
        metavar="N", low=0, high=10_000)
    session_stream_keepalive: float = option(
        "--session-stream-keepalive", "float", 30.0,
        "Seconds a session stream may send nothing (not even a keep-alive) before it counts as hung and is "
        "reconnected (>= 1).", metavar="S", low=1)


def _build(ctx: SourceContext) -> Built:
    source = ctx.client(SessionsSource)
    source.stream_limit = ctx.options.session_streams
    source.stream_keepalive = ctx.options.session_stream_keepalive
    # Sessions are always discovered: nothing else names them.
    discovery = SessionDiscovery(source, ctx.lookback, ctx.options.agent_ids)
    streams = LiveStreams(source.stream_reader(), source.stream_limit) if source.stream_limit > 0 else None
    return Built(listing=source, discoveries=(discovery,), streams=streams,
                 webhook_scopes=WebhookScopes(filtered=discovery.filtered))

SPEC = SourceSpec(SOURCE_SESSIONS, "discover and poll Agents API sessions", "required", SessionsOptions,
                  build=_build)
