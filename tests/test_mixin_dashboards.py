"""Structural checks of dashboards/*.json, and that they are exactly what mixin/dashboards.py generates."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics_spec import METRIC_NAMES, METRICS
from mixin import dashboards
from mixin.config import DEFAULT
from mixin.grafana import DATASOURCE
from tests.helpers import REPO_ROOT

DASHBOARD_DIR = REPO_ROOT / "dashboards"
RULES = REPO_ROOT / "rules" / "assistants-exporter.rules.yml"
SLO_RULES = REPO_ROOT / "rules" / "assistants-exporter-slos.rules.yml"
EXPECTED_UIDS = {"assistants-runs-overview", "assistants-exporter-health", "assistants-slos"}
HISTOGRAMS = {m.name for m in METRICS if m.type == "histogram"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


BOARDS: dict[str, dict[str, Any]] = {p.name: load(p) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in panels(board):
        for t in p["targets"]:
            yield p["title"], t["expr"]


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def recording_rule_names() -> set[str]:
    return {r["record"] for path in (RULES, SLO_RULES) for r in rules_of(path) if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals ($job, regexes, label_replace args)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery windows
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_metric_name_parser() -> None:
    expr = ('sum by (status) (rate(a_total{x="y|z"}[5m])) / on () group_left clamp_min(sum(b), 1e-9)\n'
            'or on () label_replace(vector(0), "reason", "(none)", "", "") and c_bucket offset 5m')
    assert metric_names(expr) == {"a_total", "b", "c_bucket"}


def test_committed_dashboards_match_generator() -> None:
    generated = dashboards.build(DEFAULT)
    assert set(generated) == set(BOARDS), "dashboards/ has files the generator does not produce, or misses some"
    for name, board in generated.items():
        committed = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert committed == dashboards.render(board), f"{name} is stale: run `python -m mixin.dashboards`"


def test_schema_and_stable_uids() -> None:
    uids = [b["uid"] for b in BOARDS.values()]
    assert sorted(uids) == sorted(EXPECTED_UIDS), "uids are public (links, provisioning): keep them stable"
    assert len({b["title"] for b in BOARDS.values()}) == len(BOARDS)
    for board in BOARDS.values():
        assert board["schemaVersion"] >= 39
        assert board["id"] is None, "an exported id breaks import into another Grafana"
        assert len(board["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", board["uid"])


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panel_ids_unique_and_grid_not_overlapping(name: str) -> None:
    board = BOARDS[name]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_datasource_is_always_the_variable(name: str) -> None:
    board = BOARDS[name]
    for key, value in walk(board):
        if key == "datasource":
            assert value == DATASOURCE, f"hard-coded data source {value}"
    for p in panels(board):
        assert p["datasource"] == DATASOURCE
        assert p["targets"] and all(t["datasource"] == DATASOURCE for t in p["targets"])


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_has_a_description(name: str) -> None:
    for p in panels(BOARDS[name]):
        assert len(p.get("description", "")) >= 60, f"{p['title']}: say what it means and what to do"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_template_variables(name: str) -> None:
    board = BOARDS[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    expected = {
        dashboards.RUNS_UID: {"datasource", "job", "instance", "source", "assistant_id"},
        dashboards.HEALTH_UID: {"datasource", "job", "instance", "source"},
        # The SLO recording rules sum over every exporter, as the alerts do: no job or instance.
        dashboards.SLOS_UID: {"datasource", "source", "assistant_id"},
    }[board["uid"]]
    assert set(variables) == expected
    assert variables["source"]["allValue"] == ".*", "All must match series without a source label too"
    ds = variables.pop("datasource")
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for var in variables.values():
        assert var["type"] == "query" and var["multi"] and var["includeAll"]
        m = LABEL_VALUES.match(var["query"]["query"])
        assert m and m["label"] == var["name"] and var["definition"] == var["query"]["query"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_variables_are_used_as_regex_matchers(name: str) -> None:
    """Multi-value variables expand to `a|b`, so they must be matched with =~ on their own label."""
    for title, expr in exprs(BOARDS[name]):
        for m in re.finditer(r"\$(\w+)", expr):
            if m.group(1).startswith("__"):
                continue
            var = m.group(1)
            assert expr[: m.start()].endswith(f'{var}=~"'), f"{title}: ${var} must be used as {var}=~\"${var}\""


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_metric_names_exist_in_the_contract(name: str) -> None:
    allowed = METRIC_NAMES | recording_rule_names() | {"up"}
    board = BOARDS[name]
    found: set[str] = set()
    for title, expr in exprs(board):
        names = {base_metric(n) for n in metric_names(expr)}
        assert names, f"{title}: no metric found in {expr!r}"
        assert names <= allowed, f"{title}: unknown metrics {names - allowed}"
        found |= names
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = LABEL_VALUES.match(var["query"]["query"])
            assert m and metric_names(m["selector"]) <= allowed
    assert found


def test_rate_windows_follow_the_dashboard_or_the_alerts() -> None:
    """Panels use $__rate_interval or $__range, except the ratio panels that mirror the alerts' 5m/1h windows
    and the SLO dashboard's figures over the objective's window."""
    slo_windows = {DEFAULT.slos.run_success.window, DEFAULT.slos.queue_latency.window}
    for board in BOARDS.values():
        for title, expr in exprs(board):
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window in {"$__rate_interval", "$__range"} or (
                    "ratio" in title.lower() and window in {"5m", "1h"}) or (
                    board["uid"] == dashboards.SLOS_UID and window in slo_windows), f"{title}: window {window}"


def test_source_is_filtered_wherever_the_metric_has_it() -> None:
    """Every run metric, api_up and api_requests_total carry `source` (or will): each selector filters on it."""
    with_source = {m.name for m in METRICS if m.name.startswith(("assistants_run_", "assistants_runs"))}
    with_source |= {"assistants_exporter_api_up", "assistants_exporter_api_requests_total"}
    with_source |= recording_rule_names() - {r["record"] for r in rules_of(RULES) if "record" in r}
    for board in BOARDS.values():
        for title, expr in exprs(board):
            for m in re.finditer(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
                if base_metric(m.group(1)) in with_source:
                    assert 'source=~"$source"' in m.group(2), f"{title}: {m.group(0)}"


def test_runs_overview_shows_where_runs_come_from() -> None:
    board = BOARDS[f"{dashboards.RUNS_UID}.json"]
    assert any("sum by (source)" in expr for _, expr in exprs(board))


@pytest.mark.parametrize("sli", dashboards.slo.slis(DEFAULT), ids=lambda s: s.key)
def test_slo_burn_panels_draw_the_alert_thresholds(sli: Any) -> None:
    board = BOARDS[f"{dashboards.SLOS_UID}.json"]
    alerts = [r for r in rules_of(SLO_RULES) if r.get("alert") == sli.alert]
    assert len(alerts) == len(DEFAULT.slos.windows)
    for rule in alerts:
        long, short = rule["labels"]["long_window"], rule["labels"]["short_window"]
        panel = next(p for p in panels(board) if p["title"] == f"{sli.title} burn rate, {long} and {short}")
        factors = {float(x) for x in re.findall(r"/ [0-9.]+ > ([0-9.]+)", rule["expr"])}
        assert factors == {red_threshold(panel)}, f"{panel['title']}: line at {red_threshold(panel)}, alert {factors}"
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
        records = set(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["expr"])) - {sli.events_record(long)}
        assert {t["expr"].split("{")[0] for t in panel["targets"]} == records


def test_slo_budget_panels_use_the_objective() -> None:
    board = BOARDS[f"{dashboards.SLOS_UID}.json"]
    for sli in dashboards.slo.slis(DEFAULT):
        panel = next(p for p in panels(board) if p["title"] == f"{sli.title}: error budget remaining")
        assert panel["targets"][0]["expr"].rstrip().endswith(f") / {sli.budget():g}")


def red_threshold(panel: dict[str, Any]) -> float:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return float(next(s["value"] for s in steps if s["color"] == "red"))


@pytest.mark.parametrize(("uid", "title", "alert"), [
    (dashboards.RUNS_UID, "Failure ratio", "AssistantsRunFailureSpike"),
    (dashboards.RUNS_UID, "Failure ratio (1h, worst assistant)", "AssistantsRunFailureSpike"),
    (dashboards.RUNS_UID, "Expiry ratio", "AssistantsRunExpirySpike"),
    (dashboards.RUNS_UID, "Expiry ratio (1h, worst assistant)", "AssistantsRunExpirySpike"),
    (dashboards.RUNS_UID, "Oldest run per status", "AssistantsRunsRequiresActionNearExpiry"),
    (dashboards.HEALTH_UID, "429 share", "AssistantsExporterRateLimited"),
    (dashboards.HEALTH_UID, "Last successful poll", "AssistantsExporterPollingStale"),
    (dashboards.HEALTH_UID, "Time since last successful poll", "AssistantsExporterPollingStale"),
])
def test_threshold_colours_match_the_alerts(uid: str, title: str, alert: str) -> None:
    board = next(b for b in BOARDS.values() if b["uid"] == uid)
    panel = next(p for p in panels(board) if p["title"] == title)
    doc = yaml.safe_load(RULES.read_text())
    expr = next(r["expr"] for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert)
    thresholds = [float(x) for x in re.findall(r">\s*([0-9][0-9.e+-]*)", expr)]  # `>= N` is the volume guard
    assert red_threshold(panel) in thresholds, f"{title} turns red at {red_threshold(panel)}, {alert}: {expr}"
