"""`python -m mixin [REPO_ROOT]`: regenerate the dashboards and the rules files."""

from __future__ import annotations

import sys
from pathlib import Path

from mixin import dashboards, rules, slo


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else rules.REPO_ROOT
    for path in [*dashboards.write(root), rules.write(root), slo.write(root)]:
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
