"""One typed Config built from command-line flags, then ASSISTANTS_EXPORTER_* env, then a YAML file.

Every flag is declared once in FLAGS; the argparse parser, the env var names, the YAML keys and the docs
test are all derived from it. Raw values from the three sources are strings (or YAML scalars/lists) and are
converted and validated in one place, so an error names the flag and where the bad value came from.

Secrets (the API key) never come from a flag or the YAML file: only from env or a key file. No ConfigError
message ever contains the key.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from exporter import __version__
from exporter.cardinality import DEFAULT_LIMITS
from exporter.metrics_spec import RUN_LABELS_CHOICES
from exporter.model import is_unicode_text, thread_id_problem
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

logger = logging.getLogger(__name__)

ENV_PREFIX = "ASSISTANTS_EXPORTER_"
# Checked in this order; the first non-empty one wins. The key file, when given, wins over both.
API_KEY_ENV_VARS: tuple[str, ...] = ("ASSISTANTS_EXPORTER_API_KEY", "OPENAI_API_KEY")
PUSH_TOKEN_ENV = "ASSISTANTS_EXPORTER_PUSH_TOKEN"
MIN_PUSH_TOKEN = 16  # characters; a guessable token would open the write endpoints
SECRET_ENV_VARS: tuple[str, ...] = (*API_KEY_ENV_VARS, PUSH_TOKEN_ENV)
# --source values: the sources this version can run. `threads` is the default.
SOURCES: tuple[str, ...] = ("threads", "push", "sessions", "responses")
# The sources that always call the API (and need a key); `responses` can also run on webhooks alone.
API_SOURCES: tuple[str, ...] = ("threads", "sessions")
AUTH_HEADERS: tuple[str, ...] = ("bearer", "api-key")
CREDENTIALS: tuple[str, ...] = ("key", "azure")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("text", "json")


class ConfigError(Exception):
    """A one-line, human message about bad configuration. Never contains a secret."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One configuration option: its flag, env var, YAML key, default and help."""

    name: str  # "--poll-interval"
    kind: str  # str | float | int | bool | list
    default: Any
    help: str
    metavar: str | None = None
    env_aliases: tuple[str, ...] = ()  # extra env vars, consulted after the ASSISTANTS_EXPORTER_ one
    yaml: bool = True  # False for --config itself
    yaml_key_override: str | None = None  # "threads" for --thread

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def yaml_key(self) -> str | None:
        if not self.yaml:
            return None
        return self.yaml_key_override or self.dest


DEFAULT_STATE_FILE_DOC = "$XDG_STATE_HOME/assistants-exporter/state.db (or ~/.local/state/...)"

FLAGS: tuple[Flag, ...] = (
    Flag("--config", "str", None, "YAML file of settings; keys are the flag names in snake_case.",
         "FILE", yaml=False),
    Flag("--api-base", "str", "https://api.openai.com/v1", "Base URL of the Assistants-compatible API.",
         "URL"),
    Flag("--api-key-file", "str", None,
         "File holding the API key (wins over the OPENAI_API_KEY / ASSISTANTS_EXPORTER_API_KEY env vars).",
         "PATH"),
    Flag("--auth-header", "str", "bearer",
         "How the key is sent: 'bearer' (Authorization: Bearer) or 'api-key' (api-key header, Azure).",
         "{bearer,api-key}"),
    Flag("--api-version", "str", None, "api-version query parameter (Azure).", "V"),
    Flag("--credential", "str", "key",
         "How requests authenticate: 'key' (the API key) or 'azure' (Entra ID tokens from azure-identity's "
         "DefaultAzureCredential; needs the azure extra).", "{key,azure}"),
    Flag("--token-scope", "str", "https://ai.azure.com/.default", "OAuth2 scope of the Entra ID tokens.",
         "SCOPE"),
    Flag("--organization", "str", None, "OpenAI-Organization header.", "ORG", env_aliases=("OPENAI_ORG_ID",)),
    Flag("--project", "str", None, "OpenAI-Project header.", "PROJ", env_aliases=("OPENAI_PROJECT_ID",)),
    Flag("--source", "list", ("threads",),
         "Source to run; repeatable (env: comma-separated; YAML: a list): threads (poll threads), "
         "push (accept runs on /api/v1/runs), sessions (discover and poll Agents API sessions), responses "
         "(poll Responses API background responses by id).", "NAME", yaml_key_override="sources"),
    Flag("--thread", "list", (), "Thread id to watch; repeatable (env: comma-separated; YAML: a list).",
         "ID", yaml_key_override="threads"),
    Flag("--threads-file", "str", None,
         "File of thread ids, one a line, '#' comments allowed; must be readable at startup.", "PATH"),
    Flag("--discover-threads", "bool", False,
         "List the API's threads (GET {api-base}/threads) and watch the new ones (Azure AI Foundry)."),
    Flag("--discover-interval", "float", 60.0, "Seconds between discovery passes (>= 1).", "S"),
    Flag("--discover-lookback", "float", 86400.0,
         "Discovery watches threads created within this many seconds; idle older ones leave the list.", "S"),
    Flag("--poll-interval", "float", 5.0, "Seconds between polls of a thread with unfinished runs (>= 0.1).",
         "S"),
    Flag("--idle-poll-interval", "float", 60.0,
         "Seconds between polls of a thread with no unfinished runs (>= --poll-interval).", "S"),
    Flag("--max-concurrency", "int", 8, "Threads polled at the same time (1..256).", "N"),
    Flag("--max-requests-per-second", "float", 10.0, "Ceiling on API requests per second (> 0).", "R"),
    Flag("--push-token-file", "str", None,
         f"File of bearer tokens for the write endpoints, one a line (or env {PUSH_TOKEN_ENV}); "
         "the endpoints exist only when a token is set.", "PATH"),
    Flag("--push-max-body", "int", 1048576, "Largest request body the write endpoints accept, in bytes.", "BYTES"),
    Flag("--max-watched", "int", 100000, "Most scopes (threads) watched at once; registrations past it get 429.",
         "N"),
    Flag("--max-assistant-ids", "int", DEFAULT_LIMITS["assistant_id"],
         "Distinct assistant_id label values; later new ones count as other.", "N"),
    Flag("--max-models", "int", DEFAULT_LIMITS["model"],
         "Distinct model label values; later new ones count as other.", "N"),
    Flag("--max-error-codes", "int", DEFAULT_LIMITS["code"],
         "Distinct error code label values (the known codes included).", "N"),
    Flag("--max-incomplete-reasons", "int", DEFAULT_LIMITS["reason"],
         "Distinct incomplete reason label values (the known ones included).", "N"),
    Flag("--shard", "str", "0",
         "This replica's shard, 0..--total-shards - 1, or 'auto': the ordinal at the end of the hostname "
         "(a StatefulSet pod name-3 is shard 3).", "N"),
    Flag("--total-shards", "int", 1, "Replicas that share the scopes by a stable hash (>= 1).", "M"),
    Flag("--shard-peer-url", "str", None,
         "URL of a shard's write endpoints, with {shard} for its number, e.g. "
         "http://assistants-exporter-{shard}.assistants-exporter:9788; writes for another shard go there.",
         "TEMPLATE"),
    Flag("--listen", "str", "0.0.0.0:9788",
         "Address for /metrics, /healthz, /readyz; HOST:PORT or [V6]:PORT.", "HOST:PORT"),
    Flag("--state-file", "str", None, f"SQLite state file; default {DEFAULT_STATE_FILE_DOC}.", "PATH"),
    Flag("--labels", "list", ("assistant_id",),
         "Extra run labels, comma-separated, from {assistant_id,model}; '' for none.", "LIST"),
    Flag("--terminal-retention", "float", 3600.0,
         "Seconds a finished run stays in assistants_runs (>= 0).", "S"),
    Flag("--demo", "bool", False, "Poll a built-in simulator instead of a real API; no key needed."),
    Flag("--demo-scenario", "str", "steady", "Simulator scenario for --demo.", "NAME"),
    Flag("--demo-speed", "float", 5.0, "Speed-up of simulated time for --demo (> 0).", "X"),
    Flag("--log-level", "str", "info", "One of debug, info, warning, error.", "LEVEL"),
    Flag("--log-format", "str", "text", "Log lines as 'text' or one JSON object per line.", "{text,json}"),
    Flag("--agent-id", "list", (),
         "With --source sessions, discover only the sessions of this agent; repeatable (env: comma-separated; "
         "YAML: a list).", "ID", yaml_key_override="agent_ids"),
    Flag("--discover-responses", "bool", False,
         "List the API's responses (GET {api-base}/responses, Azure AI Foundry's new agents) down to "
         "--discover-lookback and poll the new ones; needs --source responses."),
    Flag("--agent", "list", (), "With --discover-responses: only this agent's responses (agent_name); "
         "repeatable (env: comma-separated; YAML: a list).", "NAME", yaml_key_override="agents"),
    Flag("--webhook-secret-file", "str", None,
         "File of webhook signing secrets (whsec_...), one a line; enables POST /webhooks/openai.", "PATH"),
    Flag("--web-config-file", "str", None,
         "exporter-toolkit web config (TLS, basic auth) for the HTTP endpoints; re-read on SIGHUP.", "PATH"),
)

FLAGS_BY_DEST: dict[str, Flag] = {f.dest: f for f in FLAGS}
YAML_KEYS: dict[str, Flag] = {f.yaml_key: f for f in FLAGS if f.yaml_key is not None}


@dataclass(frozen=True)
class Config:
    """Validated settings. Build with load_config()."""

    api_base: str = "https://api.openai.com/v1"
    api_key: str | None = field(default=None, repr=False)
    api_key_file: Path | None = None
    auth_header: str = "bearer"
    api_version: str | None = None
    credential: str = "key"
    token_scope: str = "https://ai.azure.com/.default"
    discover_threads: bool = False
    discover_interval: float = 60.0
    discover_lookback: float = 86400.0
    organization: str | None = None
    project: str | None = None
    sources: tuple[str, ...] = ("threads",)
    threads: tuple[str, ...] = ()
    threads_file: Path | None = None
    push_tokens: tuple[str, ...] = field(default=(), repr=False)
    push_token_file: Path | None = None
    push_max_body: int = 1048576
    max_watched: int = 100000
    label_caps: tuple[tuple[str, int], ...] = tuple(DEFAULT_LIMITS.items())  # label -> cap of distinct values
    shard: int = 0
    total_shards: int = 1
    shard_peer_url: str | None = None
    poll_interval: float = 5.0
    idle_poll_interval: float = 60.0
    max_concurrency: int = 8
    max_requests_per_second: float = 10.0
    listen_host: str = "0.0.0.0"
    listen_port: int = 9788
    state_file: Path = field(default_factory=lambda: default_state_file(os.environ))
    labels: tuple[str, ...] = ("assistant_id",)
    terminal_retention: float = 3600.0
    demo: bool = False
    demo_scenario: str = "steady"
    demo_speed: float = 5.0
    log_level: str = "info"
    log_format: str = "text"
    discover_responses: bool = False
    agents: tuple[str, ...] = ()
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_secret_file: Path | None = None
    config_file: Path | None = None
    agent_ids: tuple[str, ...] = ()
    # Non-fatal findings (unknown ASSISTANTS_EXPORTER_* env vars) for the caller to log once logging is up.
    warnings: tuple[str, ...] = ()
    web_config_file: Path | None = None
    web_config: WebConfig | None = field(default=None, repr=False)

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def secrets(self) -> tuple[str, ...]:
        """Strings the log filter must redact."""
        return ((self.api_key,) if self.api_key else ()) + self.push_tokens + self.webhook_secrets

    @property
    def calls_api(self) -> bool:
        """Whether a source that calls the API runs."""
        return any(name in API_SOURCES for name in self.sources) or self.polls_responses

    @property
    def polls_responses(self) -> bool:
        """Responses are polled by id when the source runs and can reach the API (a key or Entra ID)."""
        return "responses" in self.sources and (self.api_key is not None or self.credential == "azure")

    @property
    def receives(self) -> bool:
        """Whether single-run updates arrive (push, webhooks): finished runs are then kept to dedupe."""
        return bool(self.push_tokens or self.webhook_secrets or "responses" in self.sources)


# ---------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.replace("\n", " "))


def build_parser() -> argparse.ArgumentParser:
    """The parser for every flag in FLAGS (plus --help/--version). Values stay raw strings; load_config
    converts them so that flag, env and YAML values share one validation path."""
    parser = _Parser(
        prog="assistants-exporter",
        description="Prometheus exporter for AI-assistant runs.",
        allow_abbrev=False,  # flag names are a public contract; no prefix matching
        argument_default=argparse.SUPPRESS,  # absent flags stay absent so env/YAML can fill them
        epilog="Every flag can also be set as ASSISTANTS_EXPORTER_<FLAG_IN_UPPER_SNAKE> or in the --config "
        "YAML file. The API key comes only from OPENAI_API_KEY / ASSISTANTS_EXPORTER_API_KEY or "
        "--api-key-file.",
    )
    parser.add_argument("--version", action="version", version=f"assistants-exporter {__version__}")
    for flag in FLAGS:
        help_text = flag.help + ("" if flag.kind == "bool" else _default_help(flag))
        if flag.kind == "bool":
            parser.add_argument(flag.name, action="store_true", help=help_text)
        elif flag.kind == "list" and flag.name in ("--thread", "--source", "--agent-id", "--agent"):
            parser.add_argument(flag.name, action="append", metavar=flag.metavar, help=help_text)
        else:
            parser.add_argument(flag.name, metavar=flag.metavar, help=help_text)
    return parser


def _default_help(flag: Flag) -> str:
    if flag.default is None or flag.default == ():
        return ""
    shown = ",".join(flag.default) if isinstance(flag.default, tuple) else flag.default
    return f" (default: {shown})".replace("%", "%%")


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class _Raw:
    """A value before conversion, and where it came from (for error messages)."""

    value: Any
    origin: str  # "flag", "env ASSISTANTS_EXPORTER_X", "config.yaml"


def _parse_argv(argv: Sequence[str]) -> dict[str, _Raw]:
    parser = build_parser()
    ns, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ConfigError(_unknown_args_message(unknown))
    return {dest: _Raw(value, "command line") for dest, value in vars(ns).items()}


def _unknown_args_message(unknown: Sequence[str]) -> str:
    # Only flag names are echoed: a stray value could be a key typed after a non-existent --api-key.
    names = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    if any(n in ("--api-key", "--openai-api-key", "--key") for n in names):
        return ("--api-key is not a flag: secrets are read only from env (OPENAI_API_KEY or "
                "ASSISTANTS_EXPORTER_API_KEY) or from --api-key-file")
    if names:
        return f"unrecognized arguments: {' '.join(names)} (see --help)"
    return f"unexpected positional argument(s) ({len(unknown)}; values not shown); see --help"


def _env_values(env: Mapping[str, str]) -> dict[str, _Raw]:
    out: dict[str, _Raw] = {}
    for flag in FLAGS:
        for var in (flag.env, *flag.env_aliases):
            value = env.get(var)
            if value is None:
                continue
            # An empty var means "unset", except for --labels where "" means "no extra labels".
            if value.strip() or flag.name == "--labels":
                out[flag.dest] = _Raw(value, f"env {var}")
                break
    return out


def _env_warnings(env: Mapping[str, str]) -> tuple[str, ...]:
    known = {f.env for f in FLAGS} | {"ASSISTANTS_EXPORTER_API_KEY", PUSH_TOKEN_ENV}
    return tuple(
        f"ignoring unknown environment variable {name}" for name in sorted(env)
        if name.startswith(ENV_PREFIX) and name not in known
    )


def _load_yaml(path_text: str) -> dict[str, _Raw]:
    path = Path(path_text).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {_os_reason(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"--config: {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (ValueError, OverflowError, RecursionError):
        # PyYAML lets some errors through as plain exceptions: an escape beyond U+10FFFF ("\U10010000"; far
        # beyond, "\Ua0010000", an OverflowError), a date that does not exist, nesting deeper than the stack.
        raise ConfigError(f"--config: {str(path)!r} is not valid YAML: a value cannot be read") from None
    if data is None:
        return {}  # an empty file is an empty mapping
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must be a YAML mapping of settings, "
                          f"not a {type(data).__name__}")
    out: dict[str, _Raw] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key.lower().replace("-", "_") in ("api_key", "openai_api_key", "key"):
            raise ConfigError(f"--config: {str(path)!r} must not contain {key!r}: put the key in the "
                              "OPENAI_API_KEY env var or in a file named by api_key_file")
        flag = YAML_KEYS.get(key)
        if flag is None:
            hint = key.replace("-", "_")
            unknown.append(f"{key!r} (did you mean {hint!r}?)" if hint in YAML_KEYS else repr(key))
            continue
        if value is not None:  # `key:` with no value means "not set"
            out[flag.dest] = _Raw(value, f"{path.name}")
    if unknown:
        raise ConfigError(f"--config: unknown key(s) in {str(path)!r}: {', '.join(unknown)}")
    return out


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return type(exc).__name__


# ---------------------------------------------------------------------------------------------- conversion


def _fail(flag: Flag, raw: _Raw, what: str) -> NoReturn:
    value = raw.value
    shown = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    if isinstance(value, str) and len(value) > 80:
        shown = repr(value[:77] + "...")
    raise ConfigError(f"{flag.name}: {what}, got {shown} (from {raw.origin})")


def _as_str(flag: Flag, raw: _Raw) -> str:
    if isinstance(raw.value, datetime.date):
        return raw.value.isoformat()  # YAML reads an unquoted 2024-05-01 as a date
    if isinstance(raw.value, bool) or not isinstance(raw.value, str | int | float):
        _fail(flag, raw, "expected a string")
    if isinstance(raw.value, str):
        _check_text(flag, raw, raw.value)
    return str(raw.value).strip()


def _check_text(flag: Flag, raw: _Raw, text: str) -> None:
    """No setting holds a NUL or a lone surrogate (undecodable argv bytes, or "\\ud800" in YAML): paths with
    either raise from open(), and ids with one could never be written to the state file."""
    if "\x00" in text:
        _fail(flag, raw, "must not contain a NUL character")
    if not is_unicode_text(text):
        _fail(flag, raw, "must be valid UTF-8 text (found an undecodable byte or a lone surrogate)")


def _as_float(flag: Flag, raw: _Raw) -> float:
    value = raw.value
    if isinstance(value, bool):
        _fail(flag, raw, "expected a number")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        _fail(flag, raw, "expected a number")
    except OverflowError:  # a YAML integer beyond any float, e.g. 10**400
        _fail(flag, raw, "expected a finite number")
    if not math.isfinite(number):
        _fail(flag, raw, "expected a finite number")
    return number


def _as_int(flag: Flag, raw: _Raw) -> int:
    value = raw.value
    if isinstance(value, bool):
        _fail(flag, raw, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    _fail(flag, raw, "expected an integer")


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _as_bool(flag: Flag, raw: _Raw) -> bool:
    value = raw.value
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    _fail(flag, raw, "expected true/false/1/0/yes/no")


def _as_list(flag: Flag, raw: _Raw) -> list[str]:
    """A list from a repeated flag (list), a comma-separated string (env, flag) or a YAML list."""
    value = raw.value
    items: list[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = []
        for v in value:
            # `--thread a,b` and YAML `threads: ["a,b"]` are accepted as a convenience.
            items.extend(v.split(",") if isinstance(v, str) else [v])
    else:
        _fail(flag, raw, "expected a list or a comma-separated string")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            _fail(flag, raw, "expected a list of strings")
        text = str(item).strip()
        _check_text(flag, _Raw(text, raw.origin), text)
        if text and text not in out:
            out.append(text)
    return out


def _choice(flag: Flag, raw: _Raw, choices: Sequence[str]) -> str:
    value = _as_str(flag, raw).lower()
    if value not in choices:
        _fail(flag, raw, f"expected one of {', '.join(choices)}")
    return value


def _api_base(flag: Flag, raw: _Raw) -> str:
    text = _as_str(flag, raw)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        _fail(flag, raw, "expected an http(s) URL")
    if parts.username is not None or parts.password is not None:
        # Don't echo the value: the user part may be a credential.
        raise ConfigError(f"{flag.name}: credentials in the URL are not allowed (from {raw.origin}); "
                          "use OPENAI_API_KEY or --api-key-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(flag, raw, "expected an http(s) URL")
    if parts.query or parts.fragment:
        # Not echoed: a query string is where a careless user might put a key.
        raise ConfigError(f"{flag.name}: expected a URL without a query or fragment (from {raw.origin}); "
                          "use --api-version for api-version")
    return text.rstrip("/")


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT' or ':PORT' (all interfaces) -> (bare host, port). Raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})", text)
        if not match or ":" not in match.group(1):
            raise ValueError("expected [IPV6]:PORT")
        host, port_text = match.group(1), match.group(2)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, e.g. [::1]:9788")
        if host and not re.fullmatch(r"[A-Za-z0-9.\-_]+", host):
            raise ValueError("expected HOST:PORT")
        host = host or "0.0.0.0"
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    return host, port


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


def _prepare_state_file(flag: Flag, path: Path) -> None:
    """Create the parent directory now so a bad path fails at startup, not at the first commit."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = _os_reason(exc)
        raise ConfigError(f"{flag.name}: cannot create directory {str(parent)!r}: {reason}") from None
    if path.is_dir():
        raise ConfigError(f"{flag.name}: {str(path)!r} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        raise ConfigError(f"{flag.name}: {str(path)!r} is not writable")


# ---------------------------------------------------------------------------------------------- threads


@dataclass(frozen=True, slots=True)
class ThreadsFile:
    ids: tuple[str, ...]
    invalid: tuple[tuple[int, str], ...]  # (line number, reason)


_BOM = "\ufeff"
NOT_UTF8 = "not UTF-8 text"


def _decoded_lines(data: str | bytes) -> list[str | None]:
    """The lines of data without a leading BOM; None for a line that is not UTF-8.

    Bytes are decoded line by line so that one bad byte costs one line, not the whole file.
    """
    if isinstance(data, str):
        return list(data.removeprefix(_BOM).splitlines())
    lines: list[str | None] = []
    for raw in data.removeprefix(_BOM.encode("utf-8")).splitlines():
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(None)
    return lines


def parse_threads(data: str | bytes) -> ThreadsFile:
    """One id a line; '#' starts a comment; blanks ignored; duplicates dropped keeping the first.

    A UTF-8 BOM at the start is ignored (editors on Windows write one); a line that is not UTF-8 is
    reported as invalid and the other lines are kept.
    """
    ids: list[str] = []
    seen: set[str] = set()
    invalid: list[tuple[int, str]] = []
    for number, line in enumerate(_decoded_lines(data), start=1):
        if line is None:
            invalid.append((number, NOT_UTF8))
            continue
        candidate = line.split("#", 1)[0].strip()
        if not candidate:
            continue
        problem = thread_id_problem(candidate)
        if problem:
            invalid.append((number, problem))
        elif candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ThreadsFile(tuple(ids), tuple(invalid))


def read_threads_file(path: Path) -> ThreadsFile:
    """The parsed threads file. Does not log: the caller logs once per change of the file and counts
    the invalid lines. Raises OSError if unreadable (the caller decides whether that is fatal)."""
    return parse_threads(path.read_bytes())


# ---------------------------------------------------------------------------------------------- load


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """Config from argv (without the program name) and env, reading the --config YAML file if any.

    Raises ConfigError with a one-line message for anything bad; --help/--version exit via SystemExit(0).
    """
    from_flags = _parse_argv(argv)
    from_env = _env_values(env)
    config_raw = from_flags.get("config") or from_env.get("config")
    from_yaml: dict[str, _Raw] = {}
    if config_raw is not None:
        from_yaml = _load_yaml(_as_str(FLAGS_BY_DEST["config"], config_raw))
    # Precedence: flag > env > YAML > default.
    merged: dict[str, _Raw] = {**from_yaml, **from_env, **from_flags}
    secrets: list[str] = [v.strip() for var in SECRET_ENV_VARS if (v := env.get(var, "")).strip()]
    try:
        return _build(merged, env, config_raw, secrets)
    except ConfigError as exc:
        # Defence in depth: a key pasted into the wrong setting would otherwise be echoed back.
        message = str(exc)
        for secret in secrets:
            message = message.replace(secret, "***")
        raise ConfigError(message) from None


def _build(raw: Mapping[str, _Raw], env: Mapping[str, str], config_raw: _Raw | None,
           secrets: list[str]) -> Config:
    def source(dest: str) -> _Raw:
        return raw.get(dest) or _Raw(FLAGS_BY_DEST[dest].default, "default")

    def get(dest: str, convert: Callable[[Flag, _Raw], Any]) -> Any:
        # Defaults go through the same conversion, so e.g. the --listen default is parsed like a flag.
        r = source(dest)
        return None if r.value is None else convert(FLAGS_BY_DEST[dest], r)

    def opt_str(flag: Flag, r: _Raw) -> str | None:
        return _as_str(flag, r) or None

    def number(dest: str, low: float, inclusive: bool = True, low_name: str = "") -> float:
        value: float = get(dest, _as_float)
        if value < low or (value == low and not inclusive):
            bound = f"{low_name} ({low:g})" if low_name else f"{low:g}"
            _fail(FLAGS_BY_DEST[dest], source(dest), f"must be {'>=' if inclusive else '>'} {bound}")
        return value

    demo: bool = get("demo", _as_bool)
    sources: list[str] = get("source", _as_list) or ["threads"]
    bad_sources = [name for name in sources if name not in SOURCES]
    if bad_sources:
        _fail(FLAGS_BY_DEST["source"], source("source"), f"each source must be one of {', '.join(SOURCES)}")
    api_base: str = get("api_base", _api_base)
    auth_header: str = get("auth_header", lambda f, r: _choice(f, r, AUTH_HEADERS))
    api_version: str | None = get("api_version", opt_str)
    organization: str | None = get("organization", opt_str)
    project: str | None = get("project", opt_str)

    api_key_file_text: str | None = get("api_key_file", opt_str)
    api_key_file = Path(api_key_file_text).expanduser() if api_key_file_text else None
    api_key = _read_api_key(api_key_file, raw.get("api_key_file")) if api_key_file else _env_api_key(env)
    if api_key:
        secrets.append(api_key)  # so load_config can scrub it from any later error
    credential: str = get("credential", lambda f, r: _choice(f, r, CREDENTIALS))
    if api_key is None and not demo and any(n in API_SOURCES for n in sources) and credential == "key":
        raise ConfigError("an API key is required (set OPENAI_API_KEY or use --api-key-file), "
                          "or run with --demo")

    push_token_file_text: str | None = get("push_token_file", opt_str)
    push_token_file = Path(push_token_file_text).expanduser() if push_token_file_text else None
    push_tokens = _push_tokens(push_token_file, raw.get("push_token_file"), env)
    secrets.extend(push_tokens)
    if "push" in sources and not push_tokens:
        raise ConfigError(f"--source push needs a token: --push-token-file or env {PUSH_TOKEN_ENV}")

    threads: tuple[str, ...] = tuple(get("thread", _thread_list))
    threads_file_text: str | None = get("threads_file", opt_str)
    threads_file = Path(threads_file_text).expanduser() if threads_file_text else None
    if threads_file is not None:
        _check_threads_file(threads_file, raw["threads_file"])
    discover: bool = get("discover_threads", _as_bool)
    if (not demo and "threads" in sources and not threads and threads_file is None and not push_tokens
            and not discover):
        raise ConfigError("--thread, --threads-file or --discover-threads is required (or a push token, to "
                          "register threads over the API; or run with --demo)")
    agent_ids: list[str] = get("agent_id", _thread_list)
    if agent_ids and "sessions" not in sources:
        _fail(FLAGS_BY_DEST["agent_id"], source("agent_id"), "filters session discovery: it needs --source sessions")
    token_scope: str = get("token_scope", _as_str)
    if not re.fullmatch(r"[\x21-\x7e]{1,512}", token_scope):
        _fail(FLAGS_BY_DEST["token_scope"], source("token_scope"), "expected a scope such as "
              "https://ai.azure.com/.default")

    push_max_body: int = get("push_max_body", _as_int)
    if not 1024 <= push_max_body <= 64 * 1024 * 1024:
        _fail(FLAGS_BY_DEST["push_max_body"], source("push_max_body"), "must be 1024..67108864")
    max_watched: int = get("max_watched", _as_int)
    if max_watched < 1:
        _fail(FLAGS_BY_DEST["max_watched"], source("max_watched"), "must be >= 1")
    label_caps: list[tuple[str, int]] = []
    for label, dest in (("assistant_id", "max_assistant_ids"), ("model", "max_models"), ("code", "max_error_codes"),
                        ("reason", "max_incomplete_reasons")):
        cap: int = get(dest, _as_int)
        if cap < 1:
            _fail(FLAGS_BY_DEST[dest], source(dest), "must be >= 1")
        label_caps.append((label, cap))
    total_shards: int = get("total_shards", _as_int)
    if not 1 <= total_shards <= 1024:
        _fail(FLAGS_BY_DEST["total_shards"], source("total_shards"), "must be 1..1024")
    shard = _shard(source("shard"), total_shards, env)
    shard_peer_url: str | None = get("shard_peer_url", opt_str)
    if shard_peer_url is not None:
        if "{shard}" not in shard_peer_url:
            _fail(FLAGS_BY_DEST["shard_peer_url"], source("shard_peer_url"), "must contain {shard}")
        _api_base(FLAGS_BY_DEST["shard_peer_url"], _Raw(shard_peer_url.replace("{shard}", "0"),
                                                        source("shard_peer_url").origin))
    elif total_shards > 1 and push_tokens:
        raise ConfigError("--total-shards > 1 with write endpoints needs --shard-peer-url, to forward writes "
                          "for other shards to their owner")

    poll_interval = number("poll_interval", 0.1)
    if "idle_poll_interval" in raw:
        idle_poll_interval = number("idle_poll_interval", poll_interval, low_name="--poll-interval")
    else:
        # A long --poll-interval alone shouldn't trip over the idle default.
        idle_poll_interval = max(FLAGS_BY_DEST["idle_poll_interval"].default, poll_interval)

    max_concurrency: int = get("max_concurrency", _as_int)
    if not 1 <= max_concurrency <= 256:
        _fail(FLAGS_BY_DEST["max_concurrency"], source("max_concurrency"), "must be 1..256")

    listen_host, listen_port = get("listen", _listen)

    state_flag = FLAGS_BY_DEST["state_file"]
    state_text: str | None = get("state_file", opt_str)
    state_file = Path(state_text).expanduser() if state_text else default_state_file(env)
    _prepare_state_file(state_flag, state_file)

    labels: list[str] = get("labels", _as_list)
    unknown = [label for label in labels if label not in RUN_LABELS_CHOICES]
    if unknown:
        choices = ",".join(RUN_LABELS_CHOICES)
        _fail(FLAGS_BY_DEST["labels"], source("labels"), f"each label must be one of {choices}")

    discover_responses: bool = get("discover_responses", _as_bool)
    agents: tuple[str, ...] = tuple(get("agent", _as_list))
    if discover_responses and "responses" not in sources:
        raise ConfigError("--discover-responses needs --source responses")
    if discover_responses and api_key is None and credential == "key":
        raise ConfigError("--discover-responses needs an API key (OPENAI_API_KEY or --api-key-file)")
    if agents and not discover_responses:
        raise ConfigError("--agent needs --discover-responses")
    webhook_file_text: str | None = get("webhook_secret_file", opt_str)
    webhook_secret_file = Path(webhook_file_text).expanduser() if webhook_file_text else None
    webhook_secrets = (_webhook_secrets(webhook_secret_file, raw.get("webhook_secret_file"))
                       if webhook_secret_file else [])
    secrets.extend(webhook_secrets)

    demo_scenario: str = get("demo_scenario", _as_str)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", demo_scenario):
        _fail(FLAGS_BY_DEST["demo_scenario"], source("demo_scenario"), "expected a scenario name")

    return Config(
        api_base=api_base,
        api_key=api_key,
        api_key_file=api_key_file,
        auth_header=auth_header,
        api_version=api_version,
        organization=organization,
        project=project,
        sources=tuple(sources),
        credential=credential,
        token_scope=token_scope,
        discover_threads=discover,
        discover_interval=number("discover_interval", 1.0),
        discover_lookback=number("discover_lookback", 0.0, inclusive=False),
        threads=threads,
        threads_file=threads_file,
        push_tokens=tuple(push_tokens),
        push_token_file=push_token_file,
        push_max_body=push_max_body,
        max_watched=max_watched,
        label_caps=tuple(label_caps),
        shard=shard,
        total_shards=total_shards,
        shard_peer_url=shard_peer_url,
        poll_interval=poll_interval,
        idle_poll_interval=idle_poll_interval,
        max_concurrency=max_concurrency,
        max_requests_per_second=number("max_requests_per_second", 0.0, inclusive=False),
        listen_host=listen_host,
        listen_port=listen_port,
        state_file=state_file,
        labels=tuple(labels),
        terminal_retention=number("terminal_retention", 0.0),
        demo=demo,
        demo_scenario=demo_scenario,
        demo_speed=number("demo_speed", 0.0, inclusive=False),
        log_level=get("log_level", lambda f, r: _choice(f, r, LOG_LEVELS)),
        log_format=get("log_format", lambda f, r: _choice(f, r, LOG_FORMATS)),
        discover_responses=discover_responses,
        agents=agents,
        webhook_secrets=tuple(webhook_secrets),
        webhook_secret_file=webhook_secret_file,
        config_file=Path(config_raw.value).expanduser() if config_raw else None,
        warnings=_env_warnings(env),
        agent_ids=tuple(agent_ids),
        **_web_config(get("web_config_file", opt_str)),
    )


def _shard(raw: _Raw, total: int, env: Mapping[str, str]) -> int:
    flag = FLAGS_BY_DEST["shard"]
    text = _as_str(flag, raw)
    if text == "auto":
        from exporter.shards import ordinal

        hostname = env.get("HOSTNAME") or os.uname().nodename
        number = ordinal(hostname)
        if number is None:
            raise ConfigError(f"--shard auto: hostname {hostname[:80]!r} does not end in -N (a StatefulSet "
                              "ordinal); give the shard number instead")
    elif re.fullmatch(r"\d{1,4}", text):
        number = int(text)
    else:
        _fail(flag, raw, "expected a shard number or 'auto'")
    if number >= total:
        raise ConfigError(f"--shard: {number} is not below --total-shards {total} (from {raw.origin})")
    return number


def _web_config(path_text: str | None) -> dict[str, Any]:
    """The web config fields of Config: the file is read and checked (TLS files included) at start."""
    if not path_text:
        return {}
    path = Path(path_text).expanduser()
    try:
        return {"web_config_file": path, "web_config": load_web_config(path)}
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None


def _thread_list(flag: Flag, raw: _Raw) -> list[str]:
    ids = _as_list(flag, raw)
    for thread_id in ids:
        problem = thread_id_problem(thread_id)
        if problem:
            what = "agent id" if flag.name == "--agent-id" else "thread id"
            _fail(flag, _Raw(thread_id, raw.origin), f"invalid {what} ({problem})")
    return ids


def _listen(flag: Flag, raw: _Raw) -> tuple[str, int]:
    try:
        return parse_listen(_as_str(flag, raw))
    except ValueError as exc:
        _fail(flag, raw, str(exc))


def _env_api_key(env: Mapping[str, str]) -> str | None:
    for var in API_KEY_ENV_VARS:
        value = env.get(var, "").strip()
        if value:
            return value
    return None


def _read_api_key(path: Path, raw: _Raw | None) -> str:
    origin = f" (from {raw.origin})" if raw else ""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The message names the file and the OS reason only, never the content.
        raise ConfigError(f"--api-key-file: cannot read {str(path)!r}: {_os_reason(exc)}{origin}") from None
    if not key:
        raise ConfigError(f"--api-key-file: {str(path)!r} is empty{origin}")
    if any(c.isspace() for c in key):
        raise ConfigError(f"--api-key-file: {str(path)!r} must hold only the key (found whitespace inside)")
    return key


def _secret_lines(flag: str, what: str, path: Path, raw: _Raw | None) -> list[str]:
    """The non-blank, non-comment lines of a file of secrets; a ConfigError naming the file, never a line."""
    from exporter.sources.push import read_token_file

    origin = f" (from {raw.origin})" if raw else ""
    try:
        lines = read_token_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag}: cannot read {str(path)!r}: {_os_reason(exc)}{origin}") from None
    if not lines:
        raise ConfigError(f"{flag}: {str(path)!r} holds no {what}{origin}")
    return lines


def _push_tokens(path: Path | None, raw: _Raw | None, env: Mapping[str, str]) -> list[str]:
    """Tokens from --push-token-file (one a line), else from the env var; the file wins."""
    if path is None:
        token = env.get(PUSH_TOKEN_ENV, "").strip()
        tokens, where = ([token] if token else []), f"env {PUSH_TOKEN_ENV}"
    else:
        tokens = _secret_lines("--push-token-file", "token", path, raw)
        where = f"--push-token-file {str(path)!r}"
    if any(len(t) < MIN_PUSH_TOKEN or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError(f"{where}: each push token must be at least {MIN_PUSH_TOKEN} characters, with no spaces")
    return tokens


def _webhook_secrets(path: Path, raw: _Raw | None) -> list[str]:
    """Signing secrets, one a line (two during a rotation). Errors name the file, never a secret."""
    from exporter.sources.webhooks import SecretError, parse_secret

    origin = f" (from {raw.origin})" if raw else ""
    lines = _secret_lines("--webhook-secret-file", "secret", path, raw)
    for number, line in enumerate(lines, 1):
        try:
            parse_secret(line)
        except SecretError as exc:
            raise ConfigError(f"--webhook-secret-file: {str(path)!r}: secret {number}: {exc}{origin}") from None
    return lines


def _check_threads_file(path: Path, raw: _Raw) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"--threads-file: cannot read {str(path)!r}: {_os_reason(exc)} "
                          f"(from {raw.origin})") from None
