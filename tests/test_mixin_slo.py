"""SLO rules: generated from mixin/config.py, unit-tested by promtool, and those tests catch a looser rule."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter.metrics_spec import DURATION_BUCKETS
from mixin import slo, yamlout
from mixin.config import DEFAULT, MixinConfig, SLOs
from tests.helpers import REPO_ROOT, require_binary
from tests.test_mixin_rules import RUNBOOK, github_anchor

SLO_RULES = REPO_ROOT / slo.SLO_RULES_FILE
TESTS_DIR = REPO_ROOT / "rules" / "tests"
SHORT = TESTS_DIR / "assistants-exporter-slos.rules.test.yml"
LONG = TESTS_DIR / "assistants-exporter-slos-long.rules.test.yml"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_slo_tests", TESTS_DIR / "generate_slo_tests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alerts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_file_matches_generator() -> None:
    assert SLO_RULES.read_text(encoding="utf-8") == slo.render(DEFAULT), "stale: run `python -m mixin.slo`"


def test_unit_test_files_match_their_generator() -> None:
    for path, text in load_generator().render().items():
        assert path.read_text(encoding="utf-8") == text, f"stale: run `python {TESTS_DIR / 'generate_slo_tests.py'}`"


def test_shipped_objectives_and_windows_are_the_workbook_table() -> None:
    table = [(w.long, w.short, w.factor, w.severity) for w in DEFAULT.slos.windows]
    assert table == [("1h", "5m", 14.4, "critical"), ("6h", "30m", 6.0, "critical"),
                     ("1d", "2h", 3.0, "warning"), ("3d", "6h", 1.0, "warning")]
    assert DEFAULT.slos.run_success.window == DEFAULT.slos.queue_latency.window == "30d"
    assert DEFAULT.slos.min_events == DEFAULT.thresholds.failure_min_finished, "the same volume guard as today"


def test_docs_list_the_shipped_windows() -> None:
    doc = (REPO_ROOT / "docs" / "dashboards-and-alerts.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\w+) \| ([0-9.]+)\u00d7 \| (\w+) \(\w+\) \| (\w+) \|", doc, re.MULTILINE)
    assert rows == [(w.long, w.short, f"{w.factor:g}", w.severity, w.for_) for w in DEFAULT.slos.windows]


def test_every_window_an_alert_reads_is_recorded() -> None:
    doc = yaml.safe_load(SLO_RULES.read_text())
    records = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    for rule in alerts(doc):
        used = set(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["expr"]))
        assert used and used <= records, rule["expr"]
    for sli in slo.slis(DEFAULT):
        for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
            assert sli.ratio_record(window) in records


def test_ratios_are_per_assistant_and_source() -> None:
    doc = yaml.safe_load(SLO_RULES.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        if "record" in rule:
            assert rule["record"].startswith("assistant_id_source:")
            assert "sum by (assistant_id, source)" in rule["expr"]
        else:
            assert rule["expr"].count("and on (assistant_id, source)") == 2


def test_queue_latency_threshold_must_be_a_bucket_bound() -> None:
    assert DEFAULT.slos.queue_latency.threshold_seconds in DURATION_BUCKETS
    bad = dataclasses.replace(DEFAULT.slos.queue_latency, threshold_seconds=45.0)
    cfg = MixinConfig(slos=dataclasses.replace(DEFAULT.slos, queue_latency=bad))
    with pytest.raises(ValueError, match="not a bucket bound"):
        slo.build(cfg)


def test_cancelled_and_incomplete_can_count_as_errors() -> None:
    strict = dataclasses.replace(DEFAULT.slos.run_success, cancelled_is_error=True, incomplete_is_error=True)
    cfg = MixinConfig(slos=dataclasses.replace(DEFAULT.slos, run_success=strict))
    assert 'status=~"failed|expired|cancelled|incomplete"' in slo.render(cfg)
    assert 'status=~"failed|expired"}' in slo.render(DEFAULT)


def test_disabled_slos_remove_the_rules_file(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    assert slo.write(tmp_path) == tmp_path / slo.SLO_RULES_FILE
    assert slo.write(tmp_path, MixinConfig(slos=SLOs(enabled=False))) is None
    assert not (tmp_path / slo.SLO_RULES_FILE).exists()


def test_alerts_link_to_the_runbook() -> None:
    headings = {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    for rule in alerts(yaml.safe_load(SLO_RULES.read_text())):
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert "$value" in rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in headings, f"docs/runbook.md has no heading for #{anchor}"


def test_every_alert_is_shown_firing_and_silent() -> None:
    firing: set[tuple[str, str]] = set()
    silent: set[tuple[str, str]] = set()
    for path in (SHORT, LONG):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                shown = {e["exp_labels"]["long_window"] for e in case["exp_alerts"]}
                for w in DEFAULT.slos.windows:
                    (firing if w.long in shown else silent).add((case["alertname"], w.long))
    expected = {(s.alert, w.long) for s in slo.slis(DEFAULT) for w in DEFAULT.slos.windows}
    assert expected <= firing and expected <= silent


def promtool_test(rules_text: str, test_file: Path, groups: tuple[str, ...],
                  tmp: Path) -> subprocess.CompletedProcess[str]:
    """Runs only the named test groups of `test_file` against `rules_text`, laid out as in the repository."""
    (tmp / "rules" / "tests").mkdir(parents=True)
    (tmp / slo.SLO_RULES_FILE).write_text(rules_text)
    doc = yaml.safe_load(test_file.read_text())
    doc["tests"] = [t for t in doc["tests"] if t["name"].startswith(groups)]
    assert len(doc["tests"]) == len(groups), f"no such test group among {groups}"
    copy = tmp / "rules" / "tests" / test_file.name
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([require_binary("promtool"), "test", "rules", str(copy)], capture_output=True,
                          text=True, timeout=300, check=False)


def with_shipped_texts(cfg: MixinConfig) -> str:
    """The rules for `cfg`, with the shipped labels and annotations, so that only the behaviour differs."""
    doc, shipped = slo.build(cfg), slo.build(DEFAULT)
    for rule, ref in zip(alerts(doc), alerts(shipped), strict=True):
        rule["labels"], rule["annotations"] = ref["labels"], ref["annotations"]
    return yamlout.dump(doc)


def windows_with(index: int, **change: Any) -> MixinConfig:
    windows = list(DEFAULT.slos.windows)
    windows[index] = dataclasses.replace(windows[index], **change)
    return MixinConfig(slos=dataclasses.replace(DEFAULT.slos, windows=tuple(windows)))


def slos_with(**change: Any) -> MixinConfig:
    return MixinConfig(slos=dataclasses.replace(DEFAULT.slos, **change))


FACTORS = ("run success: burn-rate factors",)
MUTATIONS: dict[str, tuple[MixinConfig, Path, tuple[str, ...]]] = {
    "14.4x factor raised": (windows_with(0, factor=14.6), SHORT, FACTORS),
    "6x factor raised": (windows_with(1, factor=6.2), SHORT, FACTORS),
    "3x factor raised": (windows_with(2, factor=3.2), SHORT, FACTORS),
    "1x factor raised": (windows_with(3, factor=1.1), SHORT, FACTORS),
    "14.4x factor lowered": (windows_with(0, factor=14.2), SHORT, FACTORS),
    "1x factor lowered": (windows_with(3, factor=0.9), SHORT, FACTORS),
    "1h window doubled": (windows_with(0, long="2h"), SHORT, ("long window 1h",)),
    "6h window doubled": (windows_with(1, long="12h"), LONG, ("long windows 6h",)),
    "1d window doubled": (windows_with(2, long="2d"), LONG, ("long windows 6h",)),
    "3d window doubled": (windows_with(3, long="6d"), LONG, ("long windows 6h",)),
    "5m confirmation doubled": (windows_with(0, short="10m"), SHORT, ("short window 5m",)),
    "30m confirmation doubled": (windows_with(1, short="1h"), SHORT, ("short window 30m",)),
    "2h confirmation doubled": (windows_with(2, short="4h"), LONG, ("short window 2h",)),
    "6h confirmation doubled": (windows_with(3, short="12h"), LONG, ("short window 6h",)),
    "volume guard lowered": (slos_with(min_events=17), SHORT, FACTORS),
    "volume guard raised": (slos_with(min_events=25), SHORT, FACTORS),
    "success target loosened": (slos_with(run_success=dataclasses.replace(DEFAULT.slos.run_success, target=0.98)),
                                SHORT, FACTORS),
    "cancelled counted as errors": (
        slos_with(run_success=dataclasses.replace(DEFAULT.slos.run_success, cancelled_is_error=True)),
        SHORT, FACTORS),
    "latency threshold raised": (
        slos_with(queue_latency=dataclasses.replace(DEFAULT.slos.queue_latency, threshold_seconds=60.0)),
        SHORT, ("queue latency",)),
}


@pytest.mark.prometheus
def test_the_selected_groups_pass_with_the_shipped_rules(tmp_path: Path) -> None:
    for i, (path, groups) in enumerate([(SHORT, (*FACTORS, "queue latency")), (LONG, ("long windows 6h",))]):
        result = promtool_test(with_shipped_texts(DEFAULT), path, groups, tmp_path / str(i))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_unit_tests_catch_a_looser_rule(name: str, tmp_path: Path) -> None:
    cfg, path, groups = MUTATIONS[name]
    result = promtool_test(with_shipped_texts(cfg), path, groups, tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with: {name}"
    # A failed expectation, not a rules file promtool could not load.
    assert "alertname:" in result.stdout + result.stderr, result.stdout + result.stderr


def test_mutations_change_the_rules() -> None:
    shipped = with_shipped_texts(DEFAULT)
    for name, (cfg, _, _) in MUTATIONS.items():
        assert with_shipped_texts(cfg) != shipped, name
