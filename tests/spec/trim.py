"""Regenerate tests/spec/openai-openapi.yaml from OpenAI's published openapi.yaml.

    python tests/spec/trim.py PATH/TO/openapi.yaml

Keeps `openapi`, `info` and, from `components.schemas`, the schemas the tests validate against (ROOTS)
plus every schema they reference, transitively; schema bodies are copied unchanged. Paths and the rest
of the document are dropped. Writes the result next to this script and prints the source's sha256, which
goes into PROVENANCE.md.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

# What the tests validate against (tests/simulator_support.py), and the Responses API's object.
ROOTS: tuple[str, ...] = (
    "RunObject",
    "ListRunsResponse",
    "RunStepObject",
    "ListRunStepsResponse",
    "ThreadObject",
    "ErrorResponse",
    "Response",
)
PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parent / "openai-openapi.yaml"


def refs(node: Any) -> set[str]:
    """Names of the schemas a node references with $ref."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(PREFIX):
                raise SystemExit(f"unsupported $ref {ref!r}: only {PREFIX}... is handled")
            found.add(ref[len(PREFIX):])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> list[str]:
    """roots and everything they reference, in the source document's order."""
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        if name not in schemas:
            raise SystemExit(f"schema {name!r} is referenced but not in the source")
        keep.add(name)
        todo.extend(refs(schemas[name]) - keep)
    return [name for name in schemas if name in keep]


def trim(source: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = source["components"]["schemas"]
    names = closure(schemas, ROOTS)
    return {
        "openapi": source["openapi"],
        "info": source["info"],
        "components": {"schemas": {name: schemas[name] for name in names}},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/spec/trim.py PATH/TO/openapi.yaml", file=sys.stderr)
        return 2
    raw = Path(argv[0]).read_bytes()
    source = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    trimmed = trim(source)
    header = (
        "# Trimmed from OpenAI's openapi.yaml by tests/spec/trim.py; see tests/spec/PROVENANCE.md.\n"
        f"# Source sha256: {hashlib.sha256(raw).hexdigest()}\n"
    )
    body = yaml.safe_dump(trimmed, sort_keys=False, allow_unicode=True, width=120)
    OUT.write_text(header + body, encoding="utf-8")
    print(f"source sha256 {hashlib.sha256(raw).hexdigest()}")
    print(f"wrote {OUT} ({len(trimmed['components']['schemas'])} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
