"""The source registry: every registered source is built from its spec and works against the simulator;
`--source` choices, source flags and the docs follow the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.config import FLAGS, SOURCE_FLAGS, ConfigError, load_config
from exporter.simulator import Simulator
from exporter.sources import registry
from exporter.sources.api import ApiSettings
from exporter.sources.http import ApiClient
from exporter.sources.spec import ClientT, SourceContext, SourceSpec
from tests.helpers import REPO_ROOT

KEY = "sk-registry-test"
# What one call of each built part is given, by source: a scope to list, a run to fetch.
SIMULATED: dict[str, str] = {"threads": "thread", "push": "", "sessions": "session", "responses": "response",
                             "langgraph": "thread"}
# Sources whose API is another simulator flavor than the default one.
FLAVORS: dict[str, str] = {"langgraph": "langgraph"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    s = Simulator(seed=5, speed=50.0, api_key=KEY, sessions_scenario="sessions").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def flavored() -> Iterator[dict[str, Simulator]]:
    sims = {flavor: Simulator(seed=5, speed=50.0, api_key=KEY, flavor=flavor).start() for flavor in FLAVORS.values()}
    yield sims
    for s in sims.values():
        s.stop()


def _context(spec: SourceSpec, sim: Simulator, requests: list[tuple[str, str, str]]) -> SourceContext:
    def client(kind: type[ClientT]) -> ClientT:
        settings = ApiSettings(base_url=sim.base_url, api_key=KEY, max_requests_per_second=1000.0)
        return kind(settings, on_request=lambda endpoint, code: requests.append((spec.name, endpoint, code)))

    return SourceContext(spec.options(), client, lookback=86400.0, can_call_api=True)


def _scope(name: str, sim: Simulator) -> str:
    """A scope with one scripted run in it."""
    if name == "langgraph":
        thread_id = sim.langgraph.create_thread()
        sim.langgraph.create_run(thread_id, "work")
        return thread_id
    if SIMULATED[name] == "thread":
        thread_id = sim.engine.create_thread()
        sim.engine.create_run(thread_id, [("queued", 1.0), ("in_progress", 1.0), ("completed", 0.0)])
        return thread_id
    session_id = sim.sessions.create_session()
    sim.sessions.create_turn(session_id, [("queued", 1.0), ("in_progress", 1.0), ("completed", 0.0)])
    return session_id


async def _exercise(spec: SourceSpec, sim: Simulator, requests: list[tuple[str, str, str]]) -> dict[str, Any]:
    built = spec.build(_context(spec, sim, requests))
    seen: dict[str, Any] = {}
    if built.listing is not None:
        result = await built.listing.poll(_scope(spec.name, sim), lambda runs: False)
        seen["listing"] = (result.outcome, result.complete, len(result.runs) > 0)
        await built.listing.aclose()
    if built.by_id is not None:
        response_id = sim.responses.spawn(1)[0]
        fetched = await built.by_id.fetch(response_id)
        seen["by_id"] = (fetched.outcome, fetched.run is not None and fetched.run.id == response_id)
        await built.by_id.aclose()
    for discovery in built.discoveries:
        found = await discovery.discover(lambda scope: False)
        seen.setdefault("discoveries", []).append((discovery.name, found.error, found.api_reached))
    return seen


def test_the_registry_lists_each_source_once_and_the_simulated_ones_are_all_of_them() -> None:
    assert tuple(spec.name for spec in registry.SOURCES) == registry.NAMES
    assert len(set(registry.NAMES)) == len(registry.NAMES)
    assert set(SIMULATED) == set(registry.NAMES), "a new source needs a line in SIMULATED and simulator routes"


@pytest.mark.parametrize("name", registry.NAMES)
def test_every_registered_source_builds_and_answers_against_the_simulator(name: str, sim: Simulator,
                                                                         flavored: dict[str, Simulator]) -> None:
    sim = flavored[FLAVORS[name]] if name in FLAVORS else sim
    spec = registry.BY_NAME[name]
    requests: list[tuple[str, str, str]] = []
    seen = asyncio.run(_exercise(spec, sim, requests))
    if SIMULATED[name] in ("thread", "session"):
        assert seen["listing"] == ("ok", True, True)
    if SIMULATED[name] == "session":
        assert seen["discoveries"] == [(name, None, True)]
    if SIMULATED[name] == "response":
        assert seen["by_id"] == ("ok", True)
    if not SIMULATED[name]:
        assert seen == {} and requests == []  # a receiver: nothing to build for the poll loop
    # Every request is counted under the source's own name.
    assert {source for source, _, _ in requests} <= {name}
    assert all(code == "200" for _, _, code in requests), requests


def test_a_discovery_option_builds_its_discovery(sim: Simulator) -> None:
    spec = registry.BY_NAME["responses"]
    options = spec.options(discover_responses=True)
    context = _context(spec, sim, [])
    built = spec.build(SourceContext(options, context.client, context.lookback, True))
    assert [d.name for d in built.discoveries] == ["responses"] and built.by_id is not None
    without_api = spec.build(SourceContext(options, context.client, context.lookback, False))
    assert without_api.by_id is None and without_api.discoveries == ()  # webhooks only


def test_the_client_factory_gives_each_source_its_class(sim: Simulator) -> None:
    made: list[type] = []

    def client(kind: type[ClientT]) -> ClientT:
        made.append(kind)
        return kind(ApiSettings(base_url=sim.base_url, api_key=KEY))

    for spec in registry.SOURCES:
        spec.build(SourceContext(spec.options(), client, 60.0, True))
    assert all(issubclass(kind, ApiClient) for kind in made) and len(made) == 4


def test_source_choices_and_flags_come_from_the_registry(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": KEY, "HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="each source must be one of " + ", ".join(registry.NAMES)):
        load_config(["--source", "bedrock"], env)
    own = {flag.name for flags in SOURCE_FLAGS.values() for flag in flags}
    assert own == {"--discover-threads", "--agent-id", "--session-streams", "--session-stream-keepalive",
                   "--discover-responses", "--agent"}
    assert own <= {flag.name for flag in FLAGS}
    for name in registry.NAMES:
        assert f"{name} (" in next(f.help for f in FLAGS if f.name == "--source")


@pytest.mark.parametrize(("args", "message"), [
    (["--thread", "t", "--agent-id", "agent_a"], "--agent-id needs --source sessions"),
    (["--source", "sessions", "--discover-threads"], "--discover-threads needs --source threads"),
    (["--source", "push", "--discover-responses"], "--discover-responses needs --source responses"),
])
def test_a_source_flag_without_its_source_is_exit_2(args: list[str], message: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ASSISTANTS_EXPORTER_PUSH_TOKEN", "push-token-0123456789")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_source_options_are_typed_per_source(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": KEY, "HOME": str(tmp_path)}
    config = load_config(["--source", "sessions", "--agent-id", "a1", "--source", "threads", "--discover-threads"],
                         env)
    assert config.options(registry.BY_NAME["sessions"]).agent_ids == ("a1",)
    assert config.options(registry.BY_NAME["threads"]).discover_threads is True
    assert config.options(registry.BY_NAME["responses"]) == registry.BY_NAME["responses"].options()


def test_every_registered_source_is_documented() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    architecture = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    adding = architecture[architecture.index("## Adding a source"):]
    for spec in registry.SOURCES:
        assert f"`--source {spec.name}`" in readme, spec.name
        assert f"`{spec.name}`" in adding, spec.name
