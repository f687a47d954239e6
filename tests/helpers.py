"""Shared test utilities: deadlines instead of sleeps, loopback ports, required binaries."""

from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# OpenAI's OpenAPI spec, trimmed to the schemas the tests use (tests/spec/PROVENANCE.md): tests never read
# outside the repository.
OPENAPI_SPEC = REPO_ROOT / "tests" / "spec" / "openai-openapi.yaml"

T = TypeVar("T")


def served_paths() -> set[str]:
    """Absolute paths quoted in the exporter's HTTP server code (server.py today; any server*.py module)."""
    paths: set[str] = set()
    for module in (REPO_ROOT / "exporter").glob("server*.py"):
        paths |= set(re.findall(r"""["'](/[a-z]+)["']""", module.read_text(encoding="utf-8")))
    return paths


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Path of a binary; skip when it is missing, but fail under CI=true, where .ci/run installs it."""
    path = shutil.which(name)
    if path:
        return path
    if in_ci():
        pytest.fail(f"{name} is required under CI=true (.ci/run installs it)")
    pytest.skip(f"{name} not installed")


def require_file(path: Path) -> Path:
    if path.exists():
        return path
    if in_ci():
        pytest.fail(f"{path} is required under CI=true")
    pytest.skip(f"{path} not present")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str | Callable[[], str] = "") -> T:
    """Poll `predicate` until it returns something truthy, or fail at the deadline. `what` may be a callable,
    to describe the state at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described or predicate}")
        time.sleep(interval)  # polling interval under a deadline, not synchronisation
        last = predicate()
    return last


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """The objects made in the block that only the cyclic garbage collector would free (filled in when the
    block ends): the collector runs first, then stays off until then."""
    found: list[object] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
