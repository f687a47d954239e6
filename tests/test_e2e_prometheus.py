"""End to end: the demo exporter, a real Prometheus with our rules, and every dashboard query.

Starts `python -m exporter --demo --demo-scenario failure-spike --demo-speed 20` and Debian's `prometheus`
on loopback (scrape and evaluation every second), then checks that every panel query of every dashboard
(the SLO dashboard's too) returns data, that the recording rules of both rules files produce values, that
AssistantsRunFailureSpike fires, and draws the README's pictures with `mixin.preview` from that Prometheus
(into a temporary directory; with ASSISTANTS_EXPORTER_WRITE_IMAGES=1 also into docs/images/, after
WRITE_MINUTES of demo so that the pictures show the spike and the windows parting).

The rules are the shipped rules/*.rules.yml with every alert's `for:` rewritten to
E2E_FOR: at --demo-speed 20 the demo's failure spike lasts about 30 seconds, shorter than the production
`for:` values, which are meant for real time. Expressions, thresholds and the minimum-volume guard are
unchanged.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mixin import preview
from tests.helpers import REPO_ROOT, free_port, require_binary, wait_until

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

RULE_FILES = sorted((REPO_ROOT / "rules").glob("*.rules.yml"))
DASHBOARDS = sorted((REPO_ROOT / "dashboards").glob("*.json"))
JOB = "assistants-exporter"
E2E_FOR = "10s"
WRITE_MINUTES = 8.0
TOTAL_BUDGET = 180.0  # seconds for the whole module once both processes are up
# What Grafana would put in for its built-in variables at a 1s scrape interval.
GRAFANA_BUILTINS: dict[str, str] = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")


@dataclass
class Stack:
    exporter: Proc
    prometheus: Proc
    exporter_port: int
    prometheus_url: str
    deadline: float  # monotonic; shared by all tests in this module
    started: float  # wall clock, when both processes were up

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


def exporter_command(port: int, state_file: Path) -> list[str]:
    return [sys.executable, "-m", "exporter", "--demo", "--demo-scenario", "failure-spike", "--demo-speed", "20",
            "--listen", f"127.0.0.1:{port}", "--state-file", str(state_file)]


def start(name: str, cmd: list[str], log: Path) -> Proc:
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def stop(proc: Proc) -> None:
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=10)


def http_get(url: str, timeout: float = 5.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def shortened_rules(source: Path, dest: Path) -> Path:
    """The shipped rules with every alert's `for:` set to E2E_FOR (see the module docstring)."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = E2E_FOR
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def prometheus_config(rules: list[Path], exporter_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("e2e")
    exporter_port, prom_port = free_port(), free_port()
    procs: list[Proc] = []
    try:
        exporter = start("exporter", exporter_command(exporter_port, tmp / "state.db"), tmp / "exporter.log")
        procs.append(exporter)
        config = tmp / "prometheus.yml"
        rules = [shortened_rules(path, tmp / path.name) for path in RULE_FILES]
        config.write_text(yaml.safe_dump(prometheus_config(rules, exporter_port)))
        prometheus = start("prometheus", [
            prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ], tmp / "prometheus.log")
        procs.append(prometheus)
        url = f"http://127.0.0.1:{prom_port}"

        def ready() -> bool:
            for proc in procs:
                proc.check_alive()
            metrics = http_get(f"http://127.0.0.1:{exporter_port}/metrics")
            return bool(metrics and b"assistants_runs" in metrics and http_get(f"{url}/-/ready"))

        wait_until(ready, timeout=60, interval=0.5, what="exporter /metrics and prometheus /-/ready")
        yield Stack(exporter, prometheus, exporter_port, url, time.monotonic() + TOTAL_BUDGET, time.time())
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(autouse=True)
def logs_on_failure(stack: Stack) -> Iterator[None]:
    """Printed after every test; pytest only shows it for the ones that failed."""
    yield
    for proc in (stack.exporter, stack.prometheus):
        print(f"----- {proc.name} log (tail) -----\n{proc.tail()}")


def api(stack: Stack, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    body = http_get(f"{stack.prometheus_url}/api/v1/{path}?{query}", timeout=10)
    if body is None:
        stack.prometheus.check_alive()
        return None
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]


def finite_samples(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in result if math.isfinite(float(s["value"][1]))]


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    data = api(stack, "query", query=expr)
    return finite_samples(data["result"]) if data else []


def prom_regex(values: list[str]) -> str:
    """Grafana's multi-value substitution for Prometheus: regex-escaped values joined by |, inside "..."."""
    return "|".join(re.escape(v) for v in values).replace("\\", "\\\\")


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in {**GRAFANA_BUILTINS, **variables}.items():
        expr = expr.replace(name if name.startswith("$__") else f"${name}", value)
    return expr


def resolve_variables(stack: Stack, board: dict[str, Any]) -> dict[str, str]:
    """Run each label_values variable query in order, as Grafana would with "All" selected."""
    resolved: dict[str, str] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = LABEL_VALUES.match(var["query"]["query"])
        assert m, var["query"]
        selector = substitute(m["selector"], resolved)
        values = api(stack, f"label/{m['label']}/values", **{"match[]": selector}) or []
        if values:
            resolved[var["name"]] = prom_regex(values)
        elif var["name"] == "source":
            resolved[var["name"]] = var["allValue"]  # Grafana's All when no series has the label yet
        else:
            return {}
    return resolved


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{board['uid']} / {p['title']} / {t['refId']}", t["expr"])
            for p in board["panels"] for t in p.get("targets", [])]


def test_failure_spike_alert_fires(stack: Stack) -> None:
    # First in the module: the demo's spike is short at --demo-speed 20, and the 5m ratio decays after it.
    seen: list[str] = []

    def firing() -> bool:
        alerts = (api(stack, "alerts") or {}).get("alerts", [])
        spike = [a for a in alerts if a["labels"].get("alertname") == "AssistantsRunFailureSpike"]
        seen[:] = [f"{a['labels']} {a['state']} {a.get('value')}" for a in spike]
        return any(a["state"] == "firing" for a in spike)

    try:
        wait_until(firing, timeout=stack.remaining(), interval=1, what="AssistantsRunFailureSpike firing")
    except AssertionError as exc:
        ratios = query(stack, "assistant_id:assistants_run_failure_ratio:rate5m")
        volume = query(stack, "assistant_id:assistants_runs_finished:increase5m")
        raise AssertionError(f"not firing; alert states {seen}; ratios {ratios}; volume {volume}") from exc


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    boards = [json.loads(path.read_text()) for path in DASHBOARDS]
    assert len(boards) >= 3
    empty: list[str] = []

    def all_return_data() -> bool:
        empty.clear()
        for board in boards:
            variables = resolve_variables(stack, board)
            if not variables:
                empty.append(f"{board['uid']}: template variables have no values yet")
                continue
            for where, expr in panel_queries(board):
                if not query(stack, substitute(expr, variables)):
                    empty.append(f"{where}: {expr}")
        return not empty

    try:
        wait_until(all_return_data, timeout=stack.remaining(), interval=2, what="every panel query")
    except AssertionError as exc:
        raise AssertionError("panel queries without data:\n" + "\n".join(empty)) from exc


def test_recording_rules_produce_values(stack: Stack) -> None:
    docs = [yaml.safe_load(path.read_text()) for path in RULE_FILES]
    records = [r["record"] for doc in docs for g in doc["groups"] for r in g["rules"] if "record" in r]
    assert len(RULE_FILES) == 2 and any(":assistants_run_queue_latency_slo_errors:" in r for r in records)
    missing: list[str] = []

    def all_recorded() -> bool:
        missing[:] = [name for name in records if not query(stack, name)]
        return not missing

    try:
        wait_until(all_recorded, timeout=stack.remaining(), interval=1, what="recording rules")
    except AssertionError as exc:
        raise AssertionError(f"recording rules without values: {missing}") from exc


def test_preview_pictures_are_drawn_from_prometheus(stack: Stack, tmp_path: Path) -> None:
    """Every README picture can be drawn from what Prometheus holds now; each carries its spec's hash."""
    out = tmp_path / "images"
    errors: list[str] = []

    def drawn() -> bool:
        minutes = max(1.0, (time.time() - stack.started) / 60)
        try:
            preview.render_all(stack.prometheus_url, out, minutes)
        except RuntimeError as exc:
            errors[:] = [str(exc)]
            return False
        return True

    try:
        wait_until(drawn, timeout=stack.remaining(), interval=2, what="preview pictures")
    except AssertionError as exc:
        raise AssertionError(f"pictures not drawn: {errors}") from exc
    from PIL import Image

    for picture in preview.pictures():
        with Image.open(out / picture.file) as image:
            assert image.format == "PNG" and image.size[0] >= 600
            assert image.text[preview.SPEC_KEY] == picture.spec_hash()
    if os.environ.get("ASSISTANTS_EXPORTER_WRITE_IMAGES") == "1":
        # Not synchronisation: the README's pictures should show minutes of demo, not the first seconds.
        wait_until(lambda: time.time() - stack.started >= WRITE_MINUTES * 60, timeout=WRITE_MINUTES * 60 + 30,
                   interval=5, what=f"{WRITE_MINUTES} minutes of demo")
        preview.render_all(stack.prometheus_url, preview.IMAGES, WRITE_MINUTES)
