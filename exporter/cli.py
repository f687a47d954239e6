"""`assistants-exporter`: wires config, store, tracker, source, metrics and server, then runs the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client import disable_created_metrics
from prometheus_client.registry import CollectorRegistry
from starlette.routing import BaseRoute

from exporter import logs
from exporter.committer import ThreadWriter
from exporter.config import Config, ConfigError, default_state_file, load_config, read_threads_file
from exporter.daemon import Daemon
from exporter.gctune import tune_after_load
from exporter.inbox import Inbox
from exporter.listeners import ListenerError, Listeners, open_listeners
from exporter.metrics import SnapshotCollector
from exporter.scheduler import Schedule
from exporter.server import HttpServer
from exporter.shards import Sharding
from exporter.sources import registry
from exporter.sources.api import ApiSettings
from exporter.sources.push import PushReceiver, PushTokens
from exporter.sources.spec import ClientFactory, ClientT, SourceContext, SourceSpec
from exporter.sources.webhooks import DeliveryLog, WebhookReceiver, WebhookSecrets
from exporter.store import Loaded, Store, StoreError
from exporter.tracker import DEDUPE_WINDOW
from exporter.watchlist import ThreadsFileWatcher, WatchList
from exporter.webconfig import WebConfigError, build_ssl_context, load_web_config

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
        listeners = open_listeners(config.listen_addresses, config.systemd_socket, config.probe_listen_address,
                                   os.environ)
    except ListenerError as exc:
        return _config_error(str(exc))
    inbox = Inbox()
    # Built here so that SIGHUP can re-read them (Reloadable).
    tokens = PushTokens(config.push_tokens, config.push_token_file) if config.push_tokens else None
    hooks = WebhookSecrets(config.webhook_secrets, config.webhook_secret_file) if config.webhook_secrets else None
    web = config.web_config
    server = HttpServer(registry, probes.healthy, probes.ready,
                        routes=_receiver_routes(config, inbox, probes, tokens, hooks),
                        ssl_context=build_ssl_context(web) if web else None,
                        web_config=web, prepare=collector.prepare, telemetry_path=config.telemetry_path)
    collector.add_listener(server.metrics_changed)
    try:
        with _demo(config) as effective:
            reloadable = Reloadable(effective, server, tokens, hooks)
            return asyncio.run(_serve(effective, collector, probes, server, listeners, inbox, reloadable))
    except (ConfigError, StoreError) as exc:
        return _config_error(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        listeners.close()  # already closed when the server ran; not when startup failed before it


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
            self.daemon.selfmetrics.push_request(code)

    def on_webhook(self, event_type: str, outcome: str) -> None:
        if self.daemon is not None:
            self.daemon.selfmetrics.webhook(event_type, outcome)


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

    # A source that polls another API polls the simulator's flavor of it (exporter/sources/spec.py).
    flavor = next((s.demo_flavor for s in config.selected_specs() if s.demo_flavor != "openai"), "openai")
    sim = Simulator(scenario=config.demo_scenario, seed=0, speed=config.demo_speed, flavor=flavor)
    sim.start()
    options = {s.name: s.demo_options(config.options(s)) for s in config.selected_specs() if s.demo_options}
    config = replace(config, source_options={**config.source_options, **options})
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
        # A hanging API ends a page's attempts after this long, so api_up can follow within a poll interval.
        deadline=max(config.poll_interval, 10.0),
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


def _client_factory(config: Config, daemon: Callable[[], Daemon], name: str) -> ClientFactory:
    """HTTP clients for source `name`: the shared settings and auth, its requests counted under its name.
    The source reports into the daemon, which needs the source: late-bound hooks break the cycle."""

    def make(kind: type[ClientT]) -> ClientT:
        return kind(
            _api_settings(config),
            on_request=lambda endpoint, code: daemon().selfmetrics.api_request(name, endpoint, code),
            on_rate_limit_remaining=lambda remaining: daemon().selfmetrics.rate_limit_remaining(remaining),
            auth=_auth(config),
        )

    return make


def _build_sources(config: Config, daemon: Callable[[], Daemon]) -> registry.Running:
    def context(spec: SourceSpec) -> SourceContext:
        return SourceContext(config.options(spec), _client_factory(config, daemon, spec.name),
                             config.discover_lookback, config.has_credentials)

    return registry.build(config.sources, context)


def _sharding(config: Config) -> Sharding:
    return Sharding(config.shard, config.total_shards, config.shard_peer_url)


def _receiver_routes(config: Config, inbox: Inbox, probes: Probes, tokens: PushTokens | None,
                     hooks: WebhookSecrets | None) -> list[BaseRoute]:
    """The write endpoints: only when a push token is configured, the webhook endpoint only with a webhook
    secret (else they answer 404)."""
    routes: list[BaseRoute] = []
    if tokens is not None:
        receiver = PushReceiver(inbox, tokens,
                                max_body=config.push_max_body, clock=time.time, on_request=probes.on_push_request,
                                sharding=_sharding(config), polls_responses=config.polls_responses)
        routes += receiver.routes()
    if hooks is not None:
        routes += WebhookReceiver(inbox, hooks, clock=time.time, on_result=probes.on_webhook).routes()
    return routes


@dataclass
class Reloadable:
    """What SIGHUP re-reads: the threads file, the push token file, the webhook secrets and the web config."""

    config: Config
    server: HttpServer
    tokens: PushTokens | None
    webhook_secrets: WebhookSecrets | None = None
    daemon: Daemon | None = None

    def reload(self) -> None:
        """Each part on its own: one that fails keeps what is in force and says so; the others still apply."""
        daemon = self.daemon
        threads_file = daemon.watchlist.threads_file if daemon is not None else None
        if daemon is not None and threads_file is not None:
            changed = threads_file.reload()
            log.info("SIGHUP: threads file %s: %d threads%s", threads_file.path, len(threads_file.threads),
                     "" if changed else " (unchanged)")
            if changed:
                daemon.sync_scopes()
        if self.tokens is not None and self.tokens.path is not None:
            self.tokens.reload()
            log.info("SIGHUP: push token file %s: %d tokens", self.tokens.path, len(self.tokens.tokens))
        if self.webhook_secrets is not None and self.webhook_secrets.path is not None:
            self.webhook_secrets.reload()
            log.info("SIGHUP: webhook secret file %s: %d secrets", self.webhook_secrets.path,
                     len(self.webhook_secrets.keys))
        if self.config.web_config_file is not None:
            try:
                web = load_web_config(self.config.web_config_file)
                self.server.reload_web_config(web)
            except WebConfigError as exc:
                log.error("SIGHUP: %s", exc)
            else:
                log.info("SIGHUP: web config %s: %s", self.config.web_config_file, web.describe())


async def _serve(config: Config, collector: SnapshotCollector, probes: Probes, server: HttpServer,
                 listeners: Listeners, inbox: Inbox, reloadable: Reloadable) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        # Stop taking work at once: the listener closes, requests in flight still get their answers.
        stop.set()
        server.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_stop)
    with suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, reloadable.reload)
    # The HTTP server runs beside the poll loop on this event loop; either one ending stops the other.
    http = asyncio.create_task(server.serve(listeners.main, listeners.probe), name="http")
    http.add_done_callback(lambda _: stop.set())
    try:
        return await _run_daemon(config, collector, probes, stop, inbox, reloadable)
    finally:
        server.stop()
        await http


def startup_line(config: Config, watchlist: WatchList, runs: int) -> str:
    """What the exporter watches and where it serves, in one line; counts, never tokens or keys."""
    file_part = ""
    if watchlist.threads_file is not None:
        file_part = f" + {len(watchlist.threads_file.threads)} from {watchlist.threads_file.path}"
    threads = f"{len(watchlist.static)} threads from flags{file_part}, {len(watchlist.registered)} registered"
    parts = [f"sources {','.join(config.sources)}"]
    if any(spec.names_threads for spec in config.selected_specs()):
        parts.append(f"api {_redacted_url(config.api_base)}")
    push = f"on ({len(config.push_tokens)} tokens)" if config.push_tokens else "off"
    parts += [threads,
              f"push endpoints {push}",
              _listening(config),
              config.web_config.describe() if config.web_config else "tls off, basic auth off",
              f"state {config.state_file} ({runs} runs)"]
    return "starting: " + "; ".join(parts)


def _listening(config: Config) -> str:
    where = "systemd's sockets" if config.systemd_socket else ", ".join(config.listen_addresses)
    probes = f" (probes also on {config.probe_listen_address})" if config.probe_listen_address else ""
    return f"listening on {where}{probes}, metrics at {config.telemetry_path}"


def _redacted_url(url: str) -> str:
    """The URL without user:password@ or query (a key put there by mistake must not reach the log)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


async def _run_daemon(config: Config, collector: SnapshotCollector, probes: Probes, stop: asyncio.Event,
                      inbox: Inbox, reloadable: Reloadable) -> int:
    store, loaded = _open_store(config)
    threads_file = ThreadsFileWatcher(config.threads_file, read_threads_file) if config.threads_file else None
    if threads_file is not None:
        threads_file.changed()  # read now, for the start-up line (the daemon re-checks on its own)
    running = _build_sources(config, lambda: daemon)
    daemon = Daemon(
        sources=running.listing,
        by_id=running.by_id,
        deliveries=DeliveryLog(loaded.deliveries, pending=loaded.pending),
        discoveries=running.discoveries,
        streams=running.streams,
        webhook_scopes=running.webhook_scopes,
        discover_interval=config.discover_interval,
        discovered_since={key.split(":", 1)[1]: float(value) for key, value in loaded.meta.items()
                          if key.startswith("discovered_since:")},
        tracker=loaded.tracker(config.labels, config.terminal_retention,
                               DEDUPE_WINDOW if config.receives else 0.0),
        store=store,
        collector=collector,
        schedule=Schedule(config.poll_interval, config.idle_poll_interval, max_in_flight=config.max_concurrency),
        watchlist=WatchList(config.threads, threads_file, loaded.registrations, config.max_watched,
                            loaded.discovered, _sharding(config).owns, config.static_source),
        run_sources=(*config.sources, *(("webhooks",) if config.webhook_secrets else ())),
        inbox=inbox,
        writer=ThreadWriter(),  # commits off the event loop (exporter/committer.py)
    )
    daemon.state.last_poll_success = float(loaded.meta.get("last_poll_success", "0") or 0)
    daemon.state.shard = (config.shard, config.total_shards)
    daemon.tracker.caps.set_limits(dict(config.label_caps))
    probes.daemon = daemon
    reloadable.daemon = daemon
    log.info("%s", startup_line(config, daemon.watchlist, len(loaded.runs)))
    del loaded
    tune_after_load()  # the loaded state out of the collector's walks: no 100 ms full collections on the loop
    try:
        await daemon.run(stop)
    finally:
        store.close()
    log.info("stopped")
    return 0
