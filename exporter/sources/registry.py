"""Every source this version can run, one line each (kube-state-metrics' `availableStores` is the model).

To add a source: write its module with a `SPEC` (exporter/sources/spec.py), add it here, add its routes to
the simulator, its tests and its docs. `--source` choices, the source's flags and checks, and its wiring in
the CLI all follow from this list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.flags import Flag, flags_of
from exporter.sources import ByIdSource, Discovery, ListingSource, assistants, langgraph, push, responses, sessions
from exporter.sources.spec import LiveStreams, SourceContext, SourceSpec, WebhookScopes

SOURCES: tuple[SourceSpec, ...] = (
    assistants.SPEC,
    push.SPEC,
    sessions.SPEC,
    responses.SPEC,
    langgraph.SPEC,
)
BY_NAME: dict[str, SourceSpec] = {spec.name: spec for spec in SOURCES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
DEFAULT: tuple[str, ...] = (assistants.SPEC.name,)


def source_flags() -> dict[str, tuple[Flag, ...]]:
    """Source name -> the flags of its own options."""
    return {spec.name: flags_of(spec.options) for spec in SOURCES}


@dataclass
class Running:
    """The built parts of the selected sources, by source name."""

    listing: dict[str, ListingSource] = field(default_factory=dict)
    by_id: dict[str, ByIdSource] = field(default_factory=dict)
    discoveries: list[Discovery] = field(default_factory=list)
    streams: dict[str, LiveStreams] = field(default_factory=dict)
    webhook_scopes: dict[str, WebhookScopes] = field(default_factory=dict)


def build(names: Iterable[str], context: Callable[[SourceSpec], SourceContext]) -> Running:
    running = Running()
    for name in names:
        spec = BY_NAME[name]
        built = spec.build(context(spec))
        if built.listing is not None:
            running.listing[name] = built.listing
        if built.by_id is not None:
            running.by_id[name] = built.by_id
        running.discoveries.extend(built.discoveries)
        if built.streams is not None:
            running.streams[name] = built.streams
        if built.webhook_scopes is not None:
            running.webhook_scopes[name] = built.webhook_scopes
    return running
