"""One typed Config built from command-line flags, then ASSISTANTS_EXPORTER_* env, then a YAML file.

Every flag is declared once, as a field of `Config` (or of a source's options class, see
exporter/sources/spec.py) with `option()` (exporter/flags.py): the argparse parser, the env var names, the
YAML keys, the conversion and the docs test all derive from it. What is left here is what involves more than
one setting: precedence, secrets, checks across settings, and each selected source's own check.

Secrets (the API key) never come from a flag or the YAML file: only from env or a key file. No ConfigError
message ever contains the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.addresses import api_url, listen_address, listen_addresses, parse_listen, peer_url, telemetry_path
from exporter.cardinality import DEFAULT_LIMITS
from exporter.flags import ConfigError, Flag, Raw, as_str, convert_all, fail, flags_of, id_list, option
from exporter.metrics_spec import RUN_LABELS_CHOICES
from exporter.model import SOURCE_THREADS
from exporter.rawsettings import build_parser as _build_parser
from exporter.rawsettings import env_values, env_warnings, load_yaml, os_reason, parse_argv
from exporter.secretfiles import env_api_key, push_tokens, read_api_key, webhook_secrets
from exporter.sources import registry
from exporter.sources.push import PUSH_TOKEN_ENV
from exporter.sources.spec import API_KEY_ENV_VARS, CheckContext, SourceSpec
from exporter.threadsfile import NOT_UTF8, ThreadsFile, parse_threads, read_threads_file
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

__all__ = [
    "FLAGS", "FLAGS_BY_DEST", "NOT_UTF8", "YAML_KEYS", "Config", "ConfigError", "ThreadsFile", "build_parser",
    "default_state_file", "load_config", "parse_listen", "parse_threads", "read_threads_file",
]

DEFAULT_STATE_FILE_DOC = "$XDG_STATE_HOME/assistants-exporter/state.db (or ~/.local/state/...)"


def default_state_file(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/assistants-exporter/state.db, else ~/.local/state/assistants-exporter/state.db."""
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "state"
    return base / "assistants-exporter" / "state.db"


def _token_scope(flag: Flag, raw: Raw) -> str:
    scope = as_str(flag, raw) or ""
    if not re.fullmatch(r"[\x21-\x7e]{1,512}", scope):
        fail(flag, raw, "expected a scope such as https://ai.azure.com/.default")
    return scope


def _shard(flag: Flag, raw: Raw) -> str:
    text = as_str(flag, raw) or ""
    if text != "auto" and not re.fullmatch(r"\d{1,4}", text):
        fail(flag, raw, "expected a shard number or 'auto'")
    return text


def _scenario(flag: Flag, raw: Raw) -> str:
    name = as_str(flag, raw) or ""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        fail(flag, raw, "expected a scenario name")
    return name


def _sources_help() -> str:
    each = ", ".join(f"{spec.name} ({spec.help})" for spec in registry.SOURCES)
    return f"Source to run; repeatable (env: comma-separated; YAML: a list): {each}."


def _cap(label: str, help: str) -> Any:
    name = {"assistant_id": "--max-assistant-ids", "model": "--max-models", "code": "--max-error-codes",
            "reason": "--max-incomplete-reasons"}[label]
    return option(name, "int", DEFAULT_LIMITS[label], help, metavar="N", low=1)


@dataclass(frozen=True)
class Config:
    """Validated settings. Build with load_config(). Fields declared with option() are flags, in the order
    of the README's table; the rest are read from files and env (secrets) or derived."""

    config_file: Path | None = option("--config", "path", None,
                                      "YAML file of settings; keys are the flag names in snake_case.",
                                      metavar="FILE", yaml=False)
    api_base: str = option("--api-base", "str", "https://api.openai.com/v1",
                           "Base URL of the Assistants-compatible API.", metavar="URL", convert=api_url)
    api_key_file: Path | None = option(
        "--api-key-file", "path", None,
        "File holding the API key (wins over the OPENAI_API_KEY / ASSISTANTS_EXPORTER_API_KEY env vars).",
        metavar="PATH")
    auth_header: str = option(
        "--auth-header", "str", "bearer",
        "How the key is sent: 'bearer' (Authorization: Bearer) or 'api-key' (api-key header, Azure).",
        metavar="{bearer,api-key}", choices=("bearer", "api-key"))
    api_version: str | None = option("--api-version", "str", None, "api-version query parameter (Azure).",
                                     metavar="V")
    credential: str = option(
        "--credential", "str", "key",
        "How requests authenticate: 'key' (the API key) or 'azure' (Entra ID tokens from azure-identity's "
        "DefaultAzureCredential; needs the azure extra).", metavar="{key,azure}", choices=("key", "azure"))
    token_scope: str = option("--token-scope", "str", "https://ai.azure.com/.default",
                              "OAuth2 scope of the Entra ID tokens.", metavar="SCOPE", convert=_token_scope)
    organization: str | None = option("--organization", "str", None, "OpenAI-Organization header.",
                                      metavar="ORG", env_aliases=("OPENAI_ORG_ID",))
    project: str | None = option("--project", "str", None, "OpenAI-Project header.", metavar="PROJ",
                                 env_aliases=("OPENAI_PROJECT_ID",))
    sources: tuple[str, ...] = option("--source", "list", registry.DEFAULT, _sources_help(), metavar="NAME",
                                      yaml_key_override="sources", repeat=True, choices=registry.NAMES,
                                      item="source")
    threads: tuple[str, ...] = option(
        "--thread", "list", (), "Thread id to watch; repeatable (env: comma-separated; YAML: a list).",
        metavar="ID", yaml_key_override="threads", repeat=True, convert=id_list("thread id"))
    threads_file: Path | None = option(
        "--threads-file", "path", None,
        "File of thread ids, one a line, '#' comments allowed; must be readable at startup.", metavar="PATH")
    discover_interval: float = option("--discover-interval", "float", 60.0,
                                      "Seconds between discovery passes (>= 1).", metavar="S", low=1)
    discover_lookback: float = option(
        "--discover-lookback", "float", 86400.0,
        "Discovery watches threads created within this many seconds; idle older ones leave the list.",
        metavar="S", low=0, above=True)
    poll_interval: float = option("--poll-interval", "float", 5.0,
                                  "Seconds between polls of a thread with unfinished runs (>= 0.1).",
                                  metavar="S", low=0.1)
    idle_poll_interval: float = option(
        "--idle-poll-interval", "float", 60.0,
        "Seconds between polls of a thread with no unfinished runs (>= --poll-interval).", metavar="S")
    max_concurrency: int = option("--max-concurrency", "int", 8, "Threads polled at the same time (1..256).",
                                  metavar="N", low=1, high=256)
    max_requests_per_second: float = option("--max-requests-per-second", "float", 10.0,
                                            "Ceiling on API requests per second (> 0).", metavar="R", low=0,
                                            above=True)
    push_token_file: Path | None = option(
        "--push-token-file", "path", None,
        f"File of bearer tokens for the write endpoints, one a line (or env {PUSH_TOKEN_ENV}); "
        "the endpoints exist only when a token is set.", metavar="PATH")
    push_max_body: int = option("--push-max-body", "int", 1048576,
                                "Largest request body the write endpoints accept, in bytes.", metavar="BYTES",
                                low=1024, high=64 * 1024 * 1024)
    max_watched: int = option("--max-watched", "int", 100000,
                              "Most scopes (threads) watched at once; registrations past it get 429.",
                              metavar="N", low=1)
    max_assistant_ids: int = _cap("assistant_id", "Distinct assistant_id label values; later new ones count "
                                  "as other.")
    max_models: int = _cap("model", "Distinct model label values; later new ones count as other.")
    max_error_codes: int = _cap("code", "Distinct error code label values (the known codes included).")
    max_incomplete_reasons: int = _cap("reason", "Distinct incomplete reason label values (the known ones "
                                       "included).")
    shard: int = option(
        "--shard", "str", "0",
        "This replica's shard, 0..--total-shards - 1, or 'auto': the ordinal at the end of the hostname "
        "(a StatefulSet pod name-3 is shard 3).", metavar="N", convert=_shard,
        factory=lambda: 0)  # the field holds the number: 'auto' is resolved at load
    total_shards: int = option("--total-shards", "int", 1,
                               "Replicas that share the scopes by a stable hash (>= 1).", metavar="M", low=1,
                               high=1024)
    shard_peer_url: str | None = option(
        "--shard-peer-url", "str", None,
        "URL of a shard's write endpoints, with {shard} for its number, e.g. "
        "http://assistants-exporter-{shard}.assistants-exporter:9788; writes for another shard go there.",
        metavar="TEMPLATE", convert=peer_url)
    listen_addresses: tuple[str, ...] = option(
        "--web.listen-address", "list", ("0.0.0.0:9788",),
        "Address for /metrics, /healthz, /readyz and the write endpoints; HOST:PORT or [V6]:PORT; repeatable: "
        "every address is served (alias --listen).", metavar="HOST:PORT", aliases=("--listen",),
        env_aliases=("ASSISTANTS_EXPORTER_LISTEN",), yaml_aliases=("listen",), repeat=True,
        convert=listen_addresses)
    telemetry_path: str = option("--web.telemetry-path", "str", "/metrics", "Path under which the metrics are "
                                 "served.", metavar="PATH", convert=telemetry_path)
    systemd_socket: bool = option(
        "--web.systemd-socket", "bool", False,
        "Serve on the listening sockets systemd passes (socket activation: LISTEN_FDS, LISTEN_PID) instead of "
        "binding --web.listen-address.")
    probe_listen_address: str | None = option(
        "--probe-listen-address", "str", None,
        "Also serve /healthz and /readyz (only those) on this address over plain HTTP, without basic auth: for "
        "liveness and readiness probes when the web config turns on TLS or basic auth; HOST:PORT.",
        metavar="HOST:PORT", convert=listen_address)
    state_file: Path = option("--state-file", "path", None,
                              f"SQLite state file; default {DEFAULT_STATE_FILE_DOC}.", metavar="PATH",
                              factory=lambda: default_state_file(os.environ))
    labels: tuple[str, ...] = option("--labels", "list", ("assistant_id",),
                                     "Extra run labels, comma-separated, from {assistant_id,model}; '' for none.",
                                     metavar="LIST", choices=RUN_LABELS_CHOICES, item="label")
    terminal_retention: float = option("--terminal-retention", "float", 3600.0,
                                       "Seconds a finished run stays in assistants_runs (>= 0).", metavar="S",
                                       low=0)
    demo: bool = option("--demo", "bool", False, "Poll a built-in simulator instead of a real API; no key needed.")
    demo_scenario: str = option("--demo-scenario", "str", "steady", "Simulator scenario for --demo.",
                                metavar="NAME", convert=_scenario)
    demo_speed: float = option("--demo-speed", "float", 5.0, "Speed-up of simulated time for --demo (> 0).",
                               metavar="X", low=0, above=True)
    log_level: str = option("--log-level", "str", "info", "One of debug, info, warning, error.",
                            metavar="LEVEL", choices=("debug", "info", "warning", "error"))
    log_format: str = option("--log-format", "str", "text", "Log lines as 'text' or one JSON object per line.",
                             metavar="{text,json}", choices=("text", "json"))
    webhook_secret_file: Path | None = option(
        "--webhook-secret-file", "path", None,
        "File of webhook signing secrets (whsec_...), one a line; enables POST /webhooks/openai.",
        metavar="PATH")
    web_config_file: Path | None = option(
        "--web.config.file", "path", None,
        "exporter-toolkit web config (TLS, basic auth) for the HTTP endpoints; re-read on SIGHUP (alias "
        "--web-config-file).", metavar="PATH", aliases=("--web-config-file",))
    # Read from env or files, never from a flag; kept out of repr.
    api_key: str | None = field(default=None, repr=False)
    push_tokens: tuple[str, ...] = field(default=(), repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    web_config: WebConfig | None = field(default=None, repr=False)
    # Source name -> its options (an instance of its spec's options class); see options().
    source_options: Mapping[str, Any] = field(default_factory=dict)
    # Non-fatal findings (unknown ASSISTANTS_EXPORTER_* env vars) for the caller to log once logging is up.
    warnings: tuple[str, ...] = ()

    def options(self, spec: SourceSpec) -> Any:
        """The options of one source: as configured when it runs, else its defaults."""
        return self.source_options.get(spec.name) or spec.options()

    @property
    def listen_address(self) -> str:
        """The first --web.listen-address (the one the start-up line and the demo name)."""
        return self.listen_addresses[0]

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen_address)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen_address)[1]

    @property
    def listen(self) -> str:
        return self.listen_address

    @property
    def label_caps(self) -> tuple[tuple[str, int], ...]:
        """Label -> cap of distinct values (exporter/cardinality.py)."""
        return (("assistant_id", self.max_assistant_ids), ("model", self.max_models),
                ("code", self.max_error_codes), ("reason", self.max_incomplete_reasons))

    def secrets(self) -> tuple[str, ...]:
        """Strings the log filter must redact."""
        return ((self.api_key,) if self.api_key else ()) + self.push_tokens + self.webhook_secrets

    @property
    def has_credentials(self) -> bool:
        """A key or Entra ID tokens: what a source needs to call the API."""
        return self.api_key is not None or self.credential == "azure"

    def selected_specs(self) -> list[SourceSpec]:
        return [registry.BY_NAME[name] for name in self.sources]

    @property
    def calls_api(self) -> bool:
        """Whether a source that calls the API runs."""
        return any(s.always_calls_api or (s.api == "optional" and self.has_credentials)
                   for s in self.selected_specs())

    @property
    def static_source(self) -> str:
        """The listing source whose scopes --thread and --threads-file name (threads unless another source
        that names threads runs; two such sources cannot run together: each has its own API)."""
        return next((s.name for s in self.selected_specs() if s.names_threads), SOURCE_THREADS)

    @property
    def polls_responses(self) -> bool:
        """Responses are polled by id when the source runs and can reach the API (a key or Entra ID)."""
        return "responses" in self.sources and self.has_credentials

    @property
    def receives(self) -> bool:
        """Whether single-run updates arrive (push, webhooks): finished runs are then kept to dedupe."""
        return bool(self.push_tokens or self.webhook_secrets or any(s.receives for s in self.selected_specs()))


CONFIG_FLAGS: tuple[Flag, ...] = flags_of(Config)
SOURCE_FLAGS: dict[str, tuple[Flag, ...]] = registry.source_flags()
# Env vars whose values are secrets: never echoed in errors, never warned about as unknown.
SECRET_ENV_VARS: tuple[str, ...] = (*dict.fromkeys(v for spec in registry.SOURCES for v in spec.key_env),
                                    PUSH_TOKEN_ENV)
# A flag two sources declare (--discover-threads: threads and langgraph) is one flag.
FLAGS: tuple[Flag, ...] = CONFIG_FLAGS + tuple({f.name: f for flags in SOURCE_FLAGS.values() for f in flags}.values())
FLAGS_BY_DEST: dict[str, Flag] = {f.dest: f for f in FLAGS}
YAML_KEYS: dict[str, Flag] = {key: f for f in FLAGS for key in f.yaml_keys}


def build_parser() -> Any:
    """The parser for every flag (plus --help/--version)."""
    return _build_parser(FLAGS)


# ---------------------------------------------------------------------------------------------- load


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """Config from argv (without the program name) and env, reading the --config YAML file if any.

    Raises ConfigError with a one-line message for anything bad; --help/--version exit via SystemExit(0).
    """
    from_flags = parse_argv(FLAGS, argv)
    from_env = env_values(FLAGS, env)
    config_raw = from_flags.get("config") or from_env.get("config")
    from_yaml: dict[str, Raw] = {}
    if config_raw is not None:
        from_yaml = load_yaml(FLAGS, as_str(FLAGS_BY_DEST["config"], config_raw) or "")
    # Precedence: flag > env > YAML > default.
    merged: dict[str, Raw] = {**from_yaml, **from_env, **from_flags}
    secrets: list[str] = [v.strip() for var in SECRET_ENV_VARS if (v := env.get(var, "")).strip()]
    try:
        return _build(merged, env, secrets)
    except ConfigError as exc:
        # Defence in depth: a key pasted into the wrong setting would otherwise be echoed back.
        message = str(exc)
        for secret in secrets:
            message = message.replace(secret, "***")
        raise ConfigError(message) from None


def _build(raw: Mapping[str, Raw], env: Mapping[str, str], secrets: list[str]) -> Config:
    read = _read_secrets(raw, env, secrets)  # first, so that no later error can echo one
    values = convert_all(Config, CONFIG_FLAGS, dict(raw))
    values["sources"] = values.get("sources") or registry.DEFAULT
    config = Config(**{**values, **read, "shard": 0})
    _check_own_api(config)
    if not config.demo and config.credential == "key" and config.api_key is None and any(
            spec.api == "required" for spec in config.selected_specs()):
        raise ConfigError("an API key is required (set OPENAI_API_KEY or use --api-key-file), "
                          "or run with --demo")
    config = dataclasses.replace(config, source_options=_source_options(config, raw))
    return _settle(config, raw, env, values.get("shard", "0"))


def _read_secrets(raw: Mapping[str, Raw], env: Mapping[str, str], secrets: list[str]) -> dict[str, Any]:
    """The API key, push tokens and webhook secrets, each added to `secrets` so errors never echo them."""

    def path(dest: str) -> Path | None:
        value: Path | None = FLAGS_BY_DEST[dest].value(raw.get(dest))
        return value

    key_file, token_file, hook_file = path("api_key_file"), path("push_token_file"), path("webhook_secret_file")
    key_vars = _key_env_vars(raw)
    api_key = read_api_key(key_file, raw.get("api_key_file")) if key_file else env_api_key(env, key_vars)
    if api_key:
        secrets.append(api_key)
    tokens = push_tokens(token_file, raw.get("push_token_file"), env)
    secrets.extend(tokens)
    hooks = webhook_secrets(hook_file, raw.get("webhook_secret_file")) if hook_file else []
    secrets.extend(hooks)
    return {"api_key": api_key, "push_tokens": tuple(tokens), "webhook_secrets": tuple(hooks)}


def _key_env_vars(raw: Mapping[str, Raw]) -> tuple[str, ...]:
    """The env vars the selected sources read their key from (the sources are read before the secrets; a bad
    value fails later, as usual)."""
    try:
        names = FLAGS_BY_DEST["source"].value(raw.get("source")) or registry.DEFAULT
    except ConfigError:
        names = registry.DEFAULT
    specs = [registry.BY_NAME[n] for n in names if n in registry.BY_NAME]
    return tuple(dict.fromkeys(v for spec in specs if spec.api != "none" for v in spec.key_env)) or API_KEY_ENV_VARS


def _check_own_api(config: Config) -> None:
    """A source whose --api-base and key are another service's runs without other API-calling sources."""
    for spec in config.selected_specs():
        if not spec.own_api:
            continue
        others = [s.name for s in config.selected_specs() if s is not spec and s.always_calls_api]
        if others or config.polls_responses:
            raise ConfigError(f"--source {spec.name} cannot run beside --source {(others or ['responses'])[0]}: "
                              "they would share --api-base and the key (run one exporter per API)")
        if config.credential != "key":
            raise ConfigError(f"--credential azure does not apply to --source {spec.name} (it takes an API key)")


def _owners(flag: Flag) -> list[str]:
    return [name for name, flags in SOURCE_FLAGS.items() if any(f.name == flag.name for f in flags)]


def _source_options(config: Config, raw: Mapping[str, Raw]) -> dict[str, Any]:
    """Each selected source's options, checked; a flag of no selected source is an error."""
    options: dict[str, Any] = {}
    for name, flags in SOURCE_FLAGS.items():
        spec = registry.BY_NAME[name]
        if name not in config.sources:
            for flag in flags:
                owners = _owners(flag)
                if flag.dest in raw and not set(owners) & set(config.sources):
                    raise ConfigError(f"{flag.name} needs --source {' or '.join(owners)}")
            continue
        options[name] = spec.options(**convert_all(spec.options, flags, dict(raw)))
        spec.check(CheckContext(options[name], config.has_credentials, config.demo,
                                bool(config.threads or config.threads_file), bool(config.push_tokens)))
    return options


def _settle(config: Config, raw: Mapping[str, Raw], env: Mapping[str, str], shard_text: str) -> Config:
    """The checks across settings, and the values that depend on others or on the environment."""
    flag = FLAGS_BY_DEST
    if config.threads_file is not None:
        _check_readable(flag["threads_file"], config.threads_file, raw["threads_file"])
    shard = _shard_number(shard_text, config.total_shards, raw.get("shard") or Raw("0", "default"), env)
    if config.shard_peer_url is None and config.total_shards > 1 and config.push_tokens:
        raise ConfigError("--total-shards > 1 with write endpoints needs --shard-peer-url, to forward writes "
                          "for other shards to their owner")
    if "idle_poll_interval" in raw:
        if config.idle_poll_interval < config.poll_interval:
            fail(flag["idle_poll_interval"], raw["idle_poll_interval"],
                 f"must be >= --poll-interval ({config.poll_interval:g})")
        idle = config.idle_poll_interval
    else:
        # A long --poll-interval alone shouldn't trip over the idle default.
        idle = max(flag["idle_poll_interval"].default, config.poll_interval)
    state_file = config.state_file if "state_file" in raw and raw["state_file"].value else default_state_file(env)
    _prepare_state_file(flag["state_file"], state_file)
    return dataclasses.replace(config, shard=shard, idle_poll_interval=idle, state_file=state_file,
                               warnings=env_warnings(FLAGS, env, [*SECRET_ENV_VARS]),
                               **_web_config(config.web_config_file))


def _shard_number(text: str, total: int, raw: Raw, env: Mapping[str, str]) -> int:
    if text == "auto":
        from exporter.shards import ordinal

        hostname = env.get("HOSTNAME") or os.uname().nodename
        number = ordinal(hostname)
        if number is None:
            raise ConfigError(f"--shard auto: hostname {hostname[:80]!r} does not end in -N (a StatefulSet "
                              "ordinal); give the shard number instead")
    else:
        number = int(text)
    if number >= total:
        raise ConfigError(f"--shard: {number} is not below --total-shards {total} (from {raw.origin})")
    return number


def _web_config(path: Path | None) -> dict[str, Any]:
    """The parsed web config: the file is read and checked (TLS files included) at start."""
    if path is None:
        return {}
    try:
        return {"web_config": load_web_config(path)}
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None


def _prepare_state_file(flag: Flag, path: Path) -> None:
    """Create the parent directory now so a bad path fails at startup, not at the first commit."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag.name}: cannot create directory {str(parent)!r}: {os_reason(exc)}") from None
    if path.is_dir():
        raise ConfigError(f"{flag.name}: {str(path)!r} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        raise ConfigError(f"{flag.name}: {str(path)!r} is not writable")


def _check_readable(flag: Flag, path: Path, raw: Raw) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"{flag.name}: cannot read {str(path)!r}: {os_reason(exc)} "
                          f"(from {raw.origin})") from None
