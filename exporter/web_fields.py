"""WebConfigError and the typed readers of `--web-config-file` values that every section shares.

The readers raise WebConfigError with the key's dotted name and what was expected; load_web_config puts the
file's name in front. Types follow what Go's YAML decoder (gopkg.in/yaml.v2, which exporter-toolkit uses)
accepts for the field, so a file that promtool accepts is not refused here for its types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WebConfigError(Exception):
    """A one-line reason the web config file is unusable; never contains a hash, a key or a password."""


def section(doc: object, name: str, known: frozenset[str]) -> Mapping[str, Any] | None:
    """The mapping under `name` (None when absent or null), after checking that every key is known."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise WebConfigError(f"{name} must be a mapping")
    no_unknown_keys(name, doc, known)
    return doc


def no_unknown_keys(name: str, doc: Mapping[Any, Any], known: frozenset[str]) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        prefix = f"{name}." if name else ""
        raise WebConfigError(f"unknown key {prefix}{unknown[0]} (exporter-toolkit's keys here: "
                             f"{', '.join(sorted(known))})")


def string(doc: Mapping[str, Any], name: str, key: str) -> str | None:
    """A non-empty string, or None when absent, null or empty (Go reads those as "", which means unset)."""
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"{name}.{key} must be a string")
    return value


def boolean(doc: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WebConfigError(f"{name}.{key} must be true or false")
    return value


def string_list(doc: Mapping[str, Any], name: str, key: str) -> tuple[str, ...] | None:
    """A list of non-empty strings; None when absent or null (an empty list is returned as ())."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise WebConfigError(f"{name}.{key} must be a list of non-empty strings")
    return tuple(value)


def one_of(value: str, name: str, choices: Mapping[str, Any] | frozenset[str]) -> str:
    if value not in choices:
        raise WebConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")
    return value
