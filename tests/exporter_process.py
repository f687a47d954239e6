"""Run the real exporter as a subprocess and read its /metrics with prometheus_client's parser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO_ROOT, free_port, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, lbl), v in samples.items():
        if n == name:
            key = dict(lbl)[label]
            out[key] = out.get(key, 0.0) + v
    return out


class ExporterProcess:
    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.args = [*args, "--listen", f"127.0.0.1:{self.port}"]
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONPATH", str(REPO_ROOT))
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ExporterProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        return self

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=5)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"exporter exited: {self.logs()}"
            r = self.get("/readyz")
            return r is not None and r.status_code == 200
        wait_until(ready, timeout, what="exporter /readyz")

    def scrape(self) -> Samples:
        r = self.get("/metrics")
        assert r is not None and r.status_code == 200
        return parse_metrics(r.text)

    def scrape_text(self) -> str:
        r = self.get("/metrics")
        assert r is not None and r.status_code == 200
        return r.text

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""
