"""ruff and mypy --strict are part of the suite: a lint failure fails CI like any other test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_clean(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
