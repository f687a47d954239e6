"""Raw settings from the three places they come from: the command line, ASSISTANTS_EXPORTER_* env vars and
the --config YAML file. Each reader returns flag dest -> Raw (the value as given, and where it came from);
exporter/flags.py converts them and exporter/config.py merges them (flag > env > YAML > default).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from exporter import __version__
from exporter.flags import ENV_PREFIX, ConfigError, Flag, Raw


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.replace("\n", " "))


def build_parser(flags: Sequence[Flag]) -> argparse.ArgumentParser:
    """The parser for every flag (plus --help/--version). Values stay raw strings, so that flag, env and YAML
    values share one conversion path."""
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
    for flag in flags:
        help_text = flag.help + ("" if flag.kind == "bool" else _default_help(flag))
        names = (flag.name, *flag.aliases)
        if flag.kind == "bool":
            parser.add_argument(*names, dest=flag.dest, action="store_true", help=help_text)
        elif flag.repeat:
            parser.add_argument(*names, dest=flag.dest, action="append", metavar=flag.metavar, help=help_text)
        else:
            parser.add_argument(*names, dest=flag.dest, metavar=flag.metavar, help=help_text)
    return parser


def _default_help(flag: Flag) -> str:
    if flag.default is None or flag.default == ():
        return ""
    shown = ",".join(flag.default) if isinstance(flag.default, tuple) else flag.default
    return f" (default: {shown})".replace("%", "%%")


def parse_argv(flags: Sequence[Flag], argv: Sequence[str]) -> dict[str, Raw]:
    ns, unknown = build_parser(flags).parse_known_args(list(argv))
    if unknown:
        raise ConfigError(_unknown_args_message(unknown))
    return {dest: Raw(value, "command line") for dest, value in vars(ns).items()}


def _unknown_args_message(unknown: Sequence[str]) -> str:
    # Only flag names are echoed: a stray value could be a key typed after a non-existent --api-key.
    names = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    if any(n in ("--api-key", "--openai-api-key", "--key") for n in names):
        return ("--api-key is not a flag: secrets are read only from env (OPENAI_API_KEY or "
                "ASSISTANTS_EXPORTER_API_KEY) or from --api-key-file")
    if names:
        return f"unrecognized arguments: {' '.join(names)} (see --help)"
    return f"unexpected positional argument(s) ({len(unknown)}; values not shown); see --help"


def env_values(flags: Sequence[Flag], env: Mapping[str, str]) -> dict[str, Raw]:
    out: dict[str, Raw] = {}
    for flag in flags:
        for var in (flag.env, *flag.env_aliases):
            value = env.get(var)
            if value is None:
                continue
            # An empty var means "unset", except for --labels where "" means "no extra labels".
            if value.strip() or flag.name == "--labels":
                out[flag.dest] = Raw(value, f"env {var}")
                break
    return out


def env_warnings(flags: Sequence[Flag], env: Mapping[str, str], other_known: Sequence[str]) -> tuple[str, ...]:
    known = {name for f in flags for name in (f.env, *f.env_aliases)} | set(other_known)
    return tuple(
        f"ignoring unknown environment variable {name}" for name in sorted(env)
        if name.startswith(ENV_PREFIX) and name not in known
    )


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return type(exc).__name__


def load_yaml(flags: Sequence[Flag], path_text: str) -> dict[str, Raw]:
    path = Path(path_text).expanduser()
    data = _read_yaml(path)
    if data is None:
        return {}  # an empty file is an empty mapping
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must be a YAML mapping of settings, "
                          f"not a {type(data).__name__}")
    keys = {key: f for f in flags for key in f.yaml_keys}
    out: dict[str, Raw] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key.lower().replace("-", "_") in ("api_key", "openai_api_key", "key"):
            raise ConfigError(f"--config: {str(path)!r} must not contain {key!r}: put the key in the "
                              "OPENAI_API_KEY env var or in a file named by api_key_file")
        flag = keys.get(key)
        if flag is None:
            hint = key.replace("-", "_")
            unknown.append(f"{key!r} (did you mean {hint!r}?)" if hint in keys else repr(key))
            continue
        if value is not None:  # `key:` with no value means "not set"
            if flag.dest in out:
                raise ConfigError(f"--config: {str(path)!r} sets {flag.name} twice (keys "
                                  f"{' and '.join(repr(k) for k in flag.yaml_keys if k in data)}); keep one")
            out[flag.dest] = Raw(value, f"{path.name}")
    if unknown:
        raise ConfigError(f"--config: unknown key(s) in {str(path)!r}: {', '.join(unknown)}")
    return out


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {os_reason(exc)}") from None
    try:
        return yaml.safe_load(text)
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
