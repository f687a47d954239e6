"""Semantic diff of two sets of dashboards: `python -m mixin.compare OLD_DIR [NEW_DIR]`.

Panels are matched by title, targets by refId and variables by name, so a reordering of keys or of the
JSON text is no difference; every leaf that differs is printed as `file: path: old -> new`. NEW_DIR
defaults to the repository's dashboards/. Used to check that a change of generator keeps the dashboards.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixin.dashboards import REPO_ROOT

MISSING = "<absent>"


def keyed(board: dict[str, Any]) -> dict[str, Any]:
    """The board with its lists of panels, targets and variables turned into dicts by a stable key."""
    doc = dict(board)
    doc["panels"] = {
        f"{p['type']} {p['title']!r}": {**p, "targets": {t.get("refId") or str(i): t
                                                         for i, t in enumerate(p.get("targets", []))}}
        for p in board.get("panels", [])
    }
    doc["templating"] = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    return doc


def diff(old: Any, new: Any, path: str = "") -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys(), key=str):
            yield from diff(old.get(key, MISSING), new.get(key, MISSING), f"{path}.{key}" if path else str(key))
    elif old != new:
        yield f"{path}: {json.dumps(old)} -> {json.dumps(new)}"


def compare(old_dir: Path, new_dir: Path) -> list[str]:
    lines = []
    for name in sorted({p.name for p in old_dir.glob("*.json")} | {p.name for p in new_dir.glob("*.json")}):
        old, new = (d / name for d in (old_dir, new_dir))
        if not (old.is_file() and new.is_file()):
            lines.append(f"{name}: only in {old_dir if old.is_file() else new_dir}")
            continue
        a, b = (keyed(json.loads(p.read_text(encoding="utf-8"))) for p in (old, new))
        lines.extend(f"{name}: {line}" for line in diff(a, b))
    return lines


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m mixin.compare OLD_DIR [NEW_DIR]", file=sys.stderr)
        return 2
    new_dir = Path(argv[1]) if len(argv) == 2 else REPO_ROOT / "dashboards"
    lines = compare(Path(argv[0]), new_dir)
    print("\n".join(lines) or "no differences")
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
