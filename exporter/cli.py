"""`assistants-exporter`: wires config, store, tracker, source, metrics and server, then runs the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client import disable_created_metrics
from prometheus_client.registry import CollectorRegistry
from starlette.routing import BaseRoute

from exporter import logs
from exporter.config import Config, ConfigError, default_state_file, load_config, threads_file_ids
from exporter.daemon import Daemon
from exporter.gctune import tune_after_load
from exporter.inbox import Inbox
from exporter.metrics import SnapshotCollector
from exporter.scheduler import Schedule
from exporter.server import HttpServer, PortInUseError, bind_socket
from exporter.sources import Discovery
from exporter.sources.assistants import ApiSettings, AssistantsSource
from exporter.sources.foundry import ThreadDiscovery
from exporter.sources.push import PushReceiver, PushTokens
from exporter.store import Loaded, Store, StoreError
from exporter.tracker import DEDUPE_WINDOW
from exporter.watchlist import ThreadsFileWatcher, WatchList

log = logging.getLogger("exporter")

EXIT_CONFIG = 2
# The demo's simulated runs are short: poll often enough that they show up at once.
DEMO_POLL = 1.0
DEMO_IDLE_POLL = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["simulate"]:
        from exporter.simulator.cli import main as simulate

        return simulate(args[1:])
    try:
        config = load_config(args, os.environ)
        _check_demo_scenario(config)
        if not config.demo and config.calls_api:
            _api_settings(config)  # validate now, before anything starts
    except ConfigError as exc:
        return _config_error(str(exc))
    logs.setup_logging(config.log_level, config.log_format, config.secrets())
    for warning in config.warnings:
        log.warning("%s", warning)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    collector = SnapshotCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    probes = Probes()
    # Bind first: a taken port is a configuration error, reported before anything else starts.
    try:
        sock = bind_socket(config.listen_host, config.listen_port)
    except PortInUseError as exc:
        return _config_error(str(exc))
    except OSError as exc:
        return _config_error(exc.strerror or str(exc))
    inbox = Inbox()
    server = HttpServer(registry, probes.healthy, probes.ready, routes=_receiver_routes(config, inbox, probes))
    collector.add_listener(server.metrics_changed)
    try:
        log.info("serving /metrics on %s", config.listen)
        with _demo(config) as effective:
            return asyncio.run(_serve(effective, collector, probes, server, sock, inbox))
    except (ConfigError, StoreError) as exc:
        return _config_error(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()  # already closed when the server ran; not when startup failed before it


class Probes:
    """/healthz and /readyz answers, delegated to the daemon once it exists."""

    def __init__(self) -> None:
        self.daemon: Daemon | None = None

    def healthy(self) -> tuple[bool, str]:
        return (True, "starting") if self.daemon is None else self.daemon.healthy()

    def ready(self) -> tuple[bool, str]:
        return (False, "starting") if self.daemon is None else self.daemon.ready()

    def on_push_request(self, code: int) -> None:
        if self.daemon is not None:
            self.daemon.on_push_request(code)


def _config_error(message: str) -> int:
    print(f"assistants-exporter: error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _check_demo_scenario(config: Config) -> None:
    from exporter.simulator import SCENARIOS

    if config.demo and config.demo_scenario not in SCENARIOS:
        raise ConfigError(f"--demo-scenario: unknown scenario {config.demo_scenario!r}; "
                          f"choose from {', '.join(SCENARIOS)}")


@contextmanager
def _demo(config: Config) -> Iterator[Config]:
    """With --demo, run the simulator on loopback and watch its threads."""
    if not config.demo:
        yield config
        return
    from exporter.simulator import Simulator

    sim = Simulator(scenario=config.demo_scenario, seed=0, speed=config.demo_speed)
    sim.start()
    with tempfile.TemporaryDirectory(prefix="assistants-exporter-demo-") as tmp:
        # The simulator's runs are new at every start, so the demo keeps no state unless asked to.
        state = config.state_file
        if state == default_state_file(os.environ):
            state = Path(tmp) / "state.db"
        log.info("demo: simulator scenario %r at %s with %d threads", config.demo_scenario, sim.base_url,
                 len(sim.thread_ids()))
        try:
            yield replace(config, api_base=sim.base_url, api_key="demo", threads=tuple(sim.thread_ids()),
                          state_file=state, poll_interval=min(config.poll_interval, DEMO_POLL),
                          idle_poll_interval=min(config.idle_poll_interval, DEMO_IDLE_POLL))
        finally:
            sim.stop()


def _open_store(config: Config) -> tuple[Store, Loaded]:
    store = Store(config.state_file, config.labels)
    loaded = store.load()
    log.info("state %s: %d runs, %d threads known", config.state_file, len(loaded.runs), len(loaded.scopes))
    return store, loaded


def _api_settings(config: Config) -> ApiSettings:
    try:
        return _build_api_settings(config)
    except ValueError as exc:  # the message names the setting, never its value
        raise ConfigError(str(exc)) from None


def _build_api_settings(config: Config) -> ApiSettings:
    return ApiSettings(
        base_url=config.api_base,
        api_key=config.api_key or "",
        auth_header="api-key" if config.auth_header == "api-key" else "bearer",
        api_version=config.api_version,
        organization=config.organization,
        project=config.project,
        max_concurrency=config.max_concurrency,
        max_requests_per_second=config.max_requests_per_second,
    )


def _auth(config: Config) -> httpx.Auth | None:
    """Entra ID tokens for --credential azure; None: the API key goes in a header."""
    if config.credential != "azure":
        return None
    from exporter.sources.credentials import AzureTokenAuth, CredentialConfigError, default_credential

    try:
        return AzureTokenAuth(default_credential(), config.token_scope)
    except CredentialConfigError as exc:
        raise ConfigError(str(exc)) from None


def _listing_sources(config: Config, daemon: Callable[[], Daemon]) -> dict[str, AssistantsSource]:
    sources: dict[str, AssistantsSource] = {}
    if "threads" in config.sources:
        # The source reports into the daemon, which needs the source: late-bound hooks break the cycle.
        sources["threads"] = AssistantsSource(
            _api_settings(config),
            on_request=lambda endpoint, code: daemon().on_request("threads", endpoint, code),
            on_rate_limit_remaining=lambda remaining: daemon().on_rate_limit_remaining(remaining),
            auth=_auth(config),
        )
    return sources


def _discoveries(config: Config, sources: dict[str, AssistantsSource]) -> list[Discovery]:
    if config.discover_threads and "threads" in sources:
        return [ThreadDiscovery(sources["threads"], config.discover_lookback)]
    return []


def _receiver_routes(config: Config, inbox: Inbox, probes: Probes) -> list[BaseRoute]:
    """The write endpoints: only when a push token is configured (else they answer 404)."""
    if not config.push_tokens:
        return []
    receiver = PushReceiver(inbox, PushTokens(config.push_tokens, config.push_token_file),
                            max_body=config.push_max_body, clock=time.time, on_request=probes.on_push_request)
    return list(receiver.routes())


async def _serve(config: Config, collector: SnapshotCollector, probes: Probes, server: HttpServer,
                 sock: socket.socket, inbox: Inbox) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # The HTTP server runs beside the poll loop on this event loop; either one ending stops the other.
    http = asyncio.create_task(server.serve(sock), name="http")
    http.add_done_callback(lambda _: stop.set())
    try:
        return await _run_daemon(config, collector, probes, stop, inbox)
    finally:
        server.stop()
        await http


async def _run_daemon(config: Config, collector: SnapshotCollector, probes: Probes, stop: asyncio.Event,
                      inbox: Inbox) -> int:
    store, loaded = _open_store(config)
    threads_file = ThreadsFileWatcher(config.threads_file, threads_file_ids) if config.threads_file else None
    sources = _listing_sources(config, lambda: daemon)
    daemon = Daemon(
        sources=sources,
        discoveries=_discoveries(config, sources),
        discover_interval=config.discover_interval,
        discovered_since={key.split(":", 1)[1]: float(value) for key, value in loaded.meta.items()
                          if key.startswith("discovered_since:")},
        tracker=loaded.tracker(config.labels, config.terminal_retention,
                               DEDUPE_WINDOW if config.push_tokens else 0.0),
        store=store,
        collector=collector,
        schedule=Schedule(config.poll_interval, config.idle_poll_interval, max_in_flight=config.max_concurrency),
        watchlist=WatchList(config.threads, threads_file, loaded.registrations, config.max_watched,
                            loaded.discovered),
        run_sources=config.sources,
        inbox=inbox,
    )
    daemon.state.last_poll_success = float(loaded.meta.get("last_poll_success", "0") or 0)
    probes.daemon = daemon
    del loaded
    tune_after_load()  # the loaded state out of the collector's walks: no 100 ms full collections on the loop
    try:
        await daemon.run(stop)
    finally:
        store.close()
    log.info("stopped")
    return 0
