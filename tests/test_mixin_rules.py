"""rules/: generated from mixin/rules.py, valid for promtool, unit-tested, and linked to docs/runbook.md."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics_spec import METRIC_NAMES
from mixin import rules
from mixin.config import DEFAULT, RULES_FILE, MixinConfig
from tests.helpers import REPO_ROOT, require_binary

RULES = REPO_ROOT / RULES_FILE
RULE_FILES = sorted((REPO_ROOT / "rules").glob("*.yml"))
UNIT_TESTS = sorted((REPO_ROOT / "rules" / "tests").glob("*.yml"))
# The unit tests of RULES_FILE; tests/test_mixin_slo.py covers the SLO rules' own.
THRESHOLD_TESTS = REPO_ROOT / "rules" / "tests" / "assistants-exporter.rules.test.yml"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
SEVERITIES = {"critical", "warning", "info"}


def rule_list(kind: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if kind in r]


def github_anchor(heading: str) -> str:
    """GitHub's slug for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_rules_file_matches_generator() -> None:
    assert RULES.read_text(encoding="utf-8") == rules.render(DEFAULT), "stale: run `python -m mixin.rules`"


@pytest.mark.prometheus
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    result = promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# Each change moves one threshold or `for:` just past a near-miss series in the unit tests, so the unit
# tests must then fail: proof that the near misses really are near and the guards are exercised.
MUTATIONS: dict[str, dict[str, Any]] = {
    "failure volume guard": {"failure_min_finished": 15},
    "failure ratio": {"failure_ratio": 0.085},
    "failure for": {"failure_for": "2m"},
    "expiry volume guard": {"expiry_min_finished": 15},
    "expiry ratio": {"expiry_ratio": 0.035},
    "queued age": {"queued_age": 105.0},
    "queued for": {"queued_for": "3m"},
    "requires_action age": {"requires_action_age": 390.0},
    "exporter down for": {"exporter_down_for": "3m"},
    "api down for": {"api_down_for": "3m"},
    "rate limited share": {"rate_limited_share": 0.04},
}


@pytest.mark.prometheus
@pytest.mark.parametrize("change", list(MUTATIONS.values()), ids=list(MUTATIONS))
def test_unit_tests_catch_a_looser_rule(change: dict[str, Any], tmp_path: Path) -> None:
    cfg = MixinConfig(thresholds=dataclasses.replace(DEFAULT.thresholds, **change))
    tests_dir = tmp_path / "rules" / "tests"
    tests_dir.mkdir(parents=True)
    rules.write(tmp_path, cfg)  # the unit tests load ../assistants-exporter.rules.yml
    result = promtool("test", "rules", shutil.copy(THRESHOLD_TESTS, tests_dir / THRESHOLD_TESTS.name))
    assert result.returncode != 0, f"unit tests still pass with {change}"


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in rule_list("alert")}
    assert alerts <= firing, f"never shown firing: {alerts - firing}"
    assert alerts <= silent, f"never shown silent: {alerts - silent}"


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    headings = {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    for rule in rule_list("alert"):
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        if not rule["expr"].rstrip().endswith("== 0"):  # for `== 0` alerts the value says nothing
            assert "$value" in ann["description"], f"{name}: put the value in the description"
        url, _, anchor = ann["runbook_url"].partition("#")
        assert url == DEFAULT.runbook_base and anchor, name
        assert anchor in headings, f"{name}: docs/runbook.md has no heading for #{anchor}"


def test_recording_rule_names_follow_conventions() -> None:
    for rule in rule_list("record"):
        level, metric, ops = rule["record"].split(":")
        assert re.fullmatch(r"[a-z_]+", level) and re.fullmatch(r"(rate|increase)(5m|1h)", ops), rule["record"]
        assert metric in METRIC_NAMES or f"{metric}_total" in METRIC_NAMES, rule["record"]
        assert f"sum by ({level})" in rule["expr"], f"{rule['record']} must aggregate to its level"
        assert "assistants_runs_finished_total" in rule["expr"], "ratios come from the counters"


def test_ratio_alerts_read_the_recording_rules() -> None:
    records = {r["record"] for r in rule_list("record")}
    alerts = {r["alert"]: r["expr"] for r in rule_list("alert")}
    for name, ratio in [("AssistantsRunFailureSpike", "failure"), ("AssistantsRunExpirySpike", "expiry")]:
        used = set(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9]+", alerts[name]))
        assert f"assistant_id:assistants_run_{ratio}_ratio:rate5m" in used and used <= records
        assert rules.VOLUME_RECORD in used, f"{name} needs the minimum-volume guard"
