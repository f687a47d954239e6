"""Helpers for the simulator tests: the OpenAPI spec as JSON Schema validators, and an HTTP client."""

from __future__ import annotations

import copy
import functools
from typing import Any

import httpx
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from exporter.simulator import Simulator
from tests.helpers import OPENAPI_SPEC

SPEC_URI = "urn:openai-openapi"
API_HEADERS = {"Authorization": "Bearer sk-test", "OpenAI-Beta": "assistants=v2"}
NULL: dict[str, Any] = {"type": "null"}


def _is_nullable_marker(node: Any) -> bool:
    return isinstance(node, dict) and node.get("nullable") is True and set(node) <= {"nullable", "description"}


def translate_nullable(node: Any) -> Any:
    """Turn OpenAPI 3.0 `nullable: true` into JSON Schema that really allows null."""
    if isinstance(node, list):
        return [translate_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: translate_nullable(value) for key, value in node.items()}
    nullable = out.pop("nullable", False) is True
    # `allOf: [{$ref: X}, {nullable: true}]` means "X or null".
    if isinstance(node.get("allOf"), list) and any(_is_nullable_marker(s) for s in node["allOf"]):
        out["allOf"] = [s for s, orig in zip(out["allOf"], node["allOf"], strict=True) if not _is_nullable_marker(orig)]
        nullable = True
    if not nullable:
        return out
    if "type" in out and not any(k in out for k in ("$ref", "allOf", "anyOf", "oneOf")):
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"] if "null" not in types else types
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, NULL]}


@functools.lru_cache(maxsize=1)
def translated_spec() -> dict[str, Any]:
    with OPENAPI_SPEC.open(encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec: dict[str, Any] = {"components": {"schemas": translate_nullable(raw["components"]["schemas"])}}
    # The real API sends first_id/last_id null for an empty page; the spec types them as plain strings.
    for name in ("ListRunsResponse", "ListRunStepsResponse"):
        props = spec["components"]["schemas"][name]["properties"]
        for key in ("first_id", "last_id"):
            props[key] = {"anyOf": [props[key], NULL]}
    return spec


def strict_spec_schema(name: str) -> dict[str, Any]:
    """A schema exactly as the spec writes it (translated), without the empty-page allowance."""
    return copy.deepcopy(translated_spec()["components"]["schemas"][name])


@functools.cache
def validator(name: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(translated_spec(), default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=registry)


def errors_for(name: str, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(instance)]


def client(sim: Simulator, **kwargs: Any) -> httpx.Client:
    headers = {**API_HEADERS, **kwargs.pop("headers", {})}
    return httpx.Client(base_url=sim.base_url, headers=headers, timeout=10.0, **kwargs)


def list_all(http: httpx.Client, thread_id: str, order: str = "desc", limit: int = 100) -> list[dict[str, Any]]:
    """Every run of a thread, following `after` cursors; asserts each page is a 200."""
    runs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit, "order": order}
    while True:
        resp = http.get(f"/threads/{thread_id}/runs", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        runs.extend(page["data"])
        if not page["has_more"]:
            return runs
        params["after"] = page["last_id"]


def quiesce(sim: Simulator, timeout: float = 60) -> None:
    """Wait until no run is unfinished, so that nothing can end between two points of a test."""
    from exporter import statuses
    from tests.helpers import wait_until

    def idle() -> bool:
        by_status = sim.engine.truth().by_status
        return not any(by_status.get(s, 0) for s in statuses.NON_TERMINAL)
    wait_until(idle, timeout, interval=0.2, what="simulator runs to finish")
