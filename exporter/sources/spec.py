"""What a source declares about itself, once, in its own module: `SPEC = SourceSpec(...)`.

The registry (exporter/sources/registry.py) lists the specs; `--source` choices, each source's own flags,
its configuration checks and how it is built all come from there (node_exporter's `registerCollector`, one
call per collector, is the model). A source is built from a `SourceContext`, not from the whole `Config`:
its own options, an HTTP client factory whose requests are counted under the source's name, and the few
shared settings it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from exporter.sources import ByIdSource, Discovery, ListingSource
from exporter.sources.http import ApiClient
from exporter.sources.session_streams import StreamReader

ClientT = TypeVar("ClientT", bound=ApiClient)

# Where an API key is read from when no --api-key-file is given; checked in this order, the first non-empty wins.
API_KEY_ENV_VARS: tuple[str, ...] = ("ASSISTANTS_EXPORTER_API_KEY", "OPENAI_API_KEY")


class ClientFactory(Protocol):
    """An HTTP client of the given class for one source: the shared API settings and auth, with its
    requests and rate-limit headers recorded under that source's name."""

    def __call__(self, kind: type[ClientT], /) -> ClientT: ...


@dataclass(frozen=True, slots=True)
class NoOptions:
    """The options of a source that has no flags of its own."""


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a source's configuration check may look at, besides its own options."""

    options: Any  # an instance of the spec's `options` class
    has_credentials: bool  # an API key, or --credential azure
    demo: bool
    has_scopes: bool  # --thread or --threads-file names scopes
    has_push_tokens: bool  # the write endpoints are on (scopes can be registered)


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source is built from."""

    options: Any  # an instance of the spec's `options` class
    client: ClientFactory
    lookback: float  # --discover-lookback: discoveries watch scopes created within this many seconds
    can_call_api: bool  # a key or Entra ID is configured (the demo has a key)


@dataclass(frozen=True, slots=True)
class LiveStreams:
    """Live event streams of the source's most recently active scopes, at most `limit` held at once
    (exporter/streams.py holds them; a streamed scope is not polled on the schedule)."""

    reader: StreamReader
    limit: int


@dataclass(frozen=True, slots=True)
class WebhookScopes:
    """Verified webhook events name the source's scopes (sources/session_events.py): a named scope is polled at
    once, an unknown one found by discovery. `filtered`: its discovery lists only some scopes, so a scope an
    event names is not watched on its own."""

    filtered: bool


@dataclass(frozen=True, slots=True)
class Built:
    """A running source's parts; each is handed to the daemon under the source's name."""

    listing: ListingSource | None = None
    by_id: ByIdSource | None = None
    discoveries: tuple[Discovery, ...] = ()
    streams: LiveStreams | None = None
    webhook_scopes: WebhookScopes | None = None


def _no_check(_: CheckContext) -> None:
    return None


def _nothing(_: SourceContext) -> Built:
    return Built()


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One source: its `--source` name, what it needs of the API, its own flags, its checks and its builder.

    `api`: "required" sources always call the API (a key or Entra ID is needed unless --demo); "open" ones
    always call it, with a key when one is set (a self-hosted server may take none); "optional" ones call it
    when credentials exist and otherwise only receive; "none" never call it. `receives`: the
    source hands single-run updates to the daemon, so finished runs are remembered to dedupe them.
    `check` raises ConfigError (exporter.flags) with a one-line message.

    `key_env`: the env vars its API key is read from. `own_api`: its --api-base and key are another
    service's, so no other API-calling source runs beside it and Entra ID does not apply. `names_threads`:
    --thread and --threads-file name its scopes. `demo_flavor` and `demo_options`: with --demo, the
    simulator's flavor it polls and its options adjusted for that workload."""

    name: str
    help: str  # one phrase for --source's help: what the source does
    api: Literal["required", "open", "optional", "none"]
    options: type = NoOptions  # a dataclass whose fields are declared with exporter.flags.option()
    check: Callable[[CheckContext], None] = _no_check
    build: Callable[[SourceContext], Built] = _nothing
    receives: bool = False
    key_env: tuple[str, ...] = API_KEY_ENV_VARS
    own_api: bool = False
    names_threads: bool = False
    demo_flavor: str = "openai"
    demo_options: Callable[[Any], Any] | None = None

    @property
    def always_calls_api(self) -> bool:
        """It calls the API whether or not credentials are set ("required" and "open")."""
        return self.api in ("required", "open")
