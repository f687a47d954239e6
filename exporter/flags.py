"""A configuration option declared once: `option()` on a dataclass field is the flag, its env var, its YAML
key, its default, its type, whether it repeats and its bounds. `Config` (exporter/config.py) and each source's
options (exporter/sources/*.py, `SourceSpec.options`) are such dataclasses; the parser, the env and YAML
readers (exporter/rawsettings.py), the README's flag table test and the conversion all derive from them.

Raw values are strings (argv, env) or YAML scalars and lists; they are converted here, in one place, so an
error names the flag and where the bad value came from. It sits below the sources (it imports only the model's
text check), so a source declares its options without reaching up into the configuration.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from exporter.model import is_unicode_text, thread_id_problem

ENV_PREFIX = "ASSISTANTS_EXPORTER_"
FLAG_KEY = "flag"  # the dataclass field metadata key that holds a Flag


class ConfigError(Exception):
    """A one-line, human message about bad configuration. Never contains a secret."""


@dataclass(frozen=True, slots=True)
class Raw:
    """A value before conversion, and where it came from (for error messages)."""

    value: Any
    origin: str  # "command line", "env ASSISTANTS_EXPORTER_X", "config.yaml", "default"


Convert = Callable[["Flag", Raw], Any]


@dataclass(frozen=True, slots=True)
class Flag:
    """One configuration option: its flag, env var, YAML key, default, type and help."""

    name: str  # "--poll-interval"
    kind: str  # str | path | float | int | bool | list
    default: Any
    help: str
    metavar: str | None = None
    env_aliases: tuple[str, ...] = ()  # extra env vars, consulted after the ASSISTANTS_EXPORTER_ one
    yaml: bool = True  # False for --config itself
    yaml_key_override: str | None = None  # "threads" for --thread
    # Earlier names kept working (users' manifests use them): flags, and YAML keys.
    aliases: tuple[str, ...] = ()
    yaml_aliases: tuple[str, ...] = ()
    repeat: bool = False  # the flag may be given more than once (a list kind)
    convert: Convert | None = None  # replaces the kind's conversion (it may validate too)
    low: float | None = None  # numbers: the smallest value allowed
    high: float | None = None
    above: bool = False  # numbers: `low` itself is not allowed
    choices: tuple[str, ...] = ()  # str: one of these (case-insensitive); list: each item one of these
    item: str = "value"  # lists with choices: what one item is called in an error ("each source must be")
    field: str = ""  # the dataclass attribute the value goes to; set by flags_of()

    @property
    def dest(self) -> str:
        """--web.listen-address -> web_listen_address: the env var and YAML key are made from it."""
        return self.name.lstrip("-").replace("-", "_").replace(".", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def yaml_key(self) -> str | None:
        if not self.yaml:
            return None
        return self.yaml_key_override or self.dest

    @property
    def yaml_keys(self) -> tuple[str, ...]:
        """The YAML key and its aliases."""
        return () if self.yaml_key is None else (self.yaml_key, *self.yaml_aliases)

    def value(self, raw: Raw | None) -> Any:
        """The converted, checked value; the default (converted the same way) when not set."""
        raw = raw or Raw(self.default, "default")
        if raw.value is None:
            return None
        value = (self.convert or CONVERTERS[self.kind])(self, raw)
        self._check(raw, value)
        return value

    def _check(self, raw: Raw, value: Any) -> None:
        if self.choices:
            items = value if isinstance(value, list | tuple) else [value]
            if any(item not in self.choices for item in items):
                each = f"each {self.item} must be" if isinstance(value, list | tuple) else "expected"
                fail(self, raw, f"{each} one of {', '.join(self.choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            too_low = self.low is not None and (value < self.low or (self.above and value == self.low))
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                fail(self, raw, f"must be {_bounds(self)}")


def _bounds(flag: Flag) -> str:
    if flag.low is not None and flag.high is not None:
        return f"{_number(flag.low)}..{_number(flag.high)}"
    return f"{'>' if flag.above else '>='} {_number(flag.low or 0)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def option(name: str, kind: str, default: Any, help: str, *, factory: Callable[[], Any] | None = None,
           **settings: Any) -> Any:
    """A dataclass field that is also a flag. `factory` makes the field's default when the flag's own default
    (shown in --help) is None, e.g. a path that depends on the environment."""
    flag = Flag(name, kind, default, help, **settings)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={FLAG_KEY: flag})
    return dataclasses.field(default=default, metadata={FLAG_KEY: flag})


def flags_of(cls: type) -> tuple[Flag, ...]:
    """The flags declared on a dataclass's fields, in field order, each knowing its field."""
    return tuple(dataclasses.replace(f.metadata[FLAG_KEY], field=f.name)
                 for f in dataclasses.fields(cls) if FLAG_KEY in f.metadata)


def convert_all(cls: type, flags: Sequence[Flag], raw: dict[str, Raw]) -> dict[str, Any]:
    """Field name -> converted value for each flag of `cls` that is set (a value that converts to None, such
    as an empty optional string, leaves the field's default)."""
    out: dict[str, Any] = {}
    for flag in flags:
        value = flag.value(raw.get(flag.dest))
        if value is not None:
            out[flag.field] = value
    return out


# ---------------------------------------------------------------------------------------------- conversion


def fail(flag: Flag, raw: Raw, what: str) -> NoReturn:
    value = raw.value
    shown = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    if isinstance(value, str) and len(value) > 80:
        shown = repr(value[:77] + "...")
    raise ConfigError(f"{flag.name}: {what}, got {shown} (from {raw.origin})")


def check_text(flag: Flag, raw: Raw, text: str) -> None:
    """No setting holds a NUL or a lone surrogate (undecodable argv bytes, or "\\ud800" in YAML): paths with
    either raise from open(), and ids with one could never be written to the state file."""
    if "\x00" in text:
        fail(flag, raw, "must not contain a NUL character")
    if not is_unicode_text(text):
        fail(flag, raw, "must be valid UTF-8 text (found an undecodable byte or a lone surrogate)")


def as_str(flag: Flag, raw: Raw) -> str | None:
    """Stripped text; None for empty text when the flag has no default (an optional setting left unset)."""
    if isinstance(raw.value, datetime.date):
        return raw.value.isoformat()  # YAML reads an unquoted 2024-05-01 as a date
    if isinstance(raw.value, bool) or not isinstance(raw.value, str | int | float):
        fail(flag, raw, "expected a string")
    if isinstance(raw.value, str):
        check_text(flag, raw, raw.value)
    text = str(raw.value).strip()
    if flag.choices:
        text = text.lower()
    return None if not text and flag.default is None else text


def as_path(flag: Flag, raw: Raw) -> Path | None:
    text = as_str(flag, raw)
    return Path(text).expanduser() if text else None


def as_float(flag: Flag, raw: Raw) -> float:
    value = raw.value
    if isinstance(value, bool):
        fail(flag, raw, "expected a number")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        fail(flag, raw, "expected a number")
    except OverflowError:  # a YAML integer beyond any float, e.g. 10**400
        fail(flag, raw, "expected a finite number")
    if not math.isfinite(number):
        fail(flag, raw, "expected a finite number")
    return number


def as_int(flag: Flag, raw: Raw) -> int:
    value = raw.value
    if isinstance(value, bool):
        fail(flag, raw, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    fail(flag, raw, "expected an integer")


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def as_bool(flag: Flag, raw: Raw) -> bool:
    value = raw.value
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    fail(flag, raw, "expected true/false/1/0/yes/no")


def as_list(flag: Flag, raw: Raw) -> tuple[str, ...]:
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
        fail(flag, raw, "expected a list or a comma-separated string")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            fail(flag, raw, "expected a list of strings")
        text = str(item).strip()
        check_text(flag, Raw(text, raw.origin), text)
        if text and text not in out:
            out.append(text)
    return tuple(out)


def id_list(what: str) -> Convert:
    """A list of ids that can go in a URL path (thread, agent ids): `what` names one in errors."""

    def convert(flag: Flag, raw: Raw) -> tuple[str, ...]:
        ids = as_list(flag, raw)
        for one in ids:
            problem = thread_id_problem(one)
            if problem:
                fail(flag, Raw(one, raw.origin), f"invalid {what} ({problem})")
        return ids

    return convert


CONVERTERS: dict[str, Convert] = {
    "str": as_str, "path": as_path, "float": as_float, "int": as_int, "bool": as_bool, "list": as_list,
}
