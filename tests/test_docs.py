"""The README and the code must say the same thing (the Dockerfile: tests/test_dockerfile.py)."""

from __future__ import annotations

import re

from exporter.config import FLAGS
from exporter.metrics_spec import DURATION_BUCKETS, METRICS, POLL_BUCKETS
from exporter.model import INVALID_REASONS
from tests.helpers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _table_rows(first_header: str) -> list[list[str]]:
    """Rows of the Markdown table whose header starts with `| first_header |`."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_readme_metric_table_matches_the_code() -> None:
    documented = {}
    for name, mtype, labels, _meaning in _table_rows("metric"):
        documented[_code(name)[0]] = (mtype, tuple(_code(labels)))
    assert documented == {m.name: (m.type, m.labels) for m in METRICS}


def test_readme_flag_table_matches_the_parser() -> None:
    documented = {_code(row[0])[0].split()[0] for row in _table_rows("flag")}
    assert documented == {f.name for f in FLAGS}


def test_readme_states_the_buckets_and_invalid_reasons_in_use() -> None:
    def fmt(buckets: tuple[float, ...]) -> str:
        return ", ".join(f"{b:g}" for b in buckets)
    assert f"the run histograms: {fmt(DURATION_BUCKETS)}" in " ".join(README.split())
    assert f"For the poll duration: {fmt(POLL_BUCKETS)}" in " ".join(README.split())
    section = README[README.index("`assistants_exporter_invalid_objects_total{reason}` reasons"):]
    assert set(re.findall(r"`([a-z_]+)`", section.split("\n\n")[0])) >= set(INVALID_REASONS)


def test_readme_quick_start_has_the_two_commands_ci_runs() -> None:
    assert "pip install . && assistants-exporter --demo" in README
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    test_command = "pip install -e '.[dev]' && python -m pytest"
    assert test_command in README
    assert test_command in ci


def test_alert_table_in_the_docs_matches_the_shipped_rules() -> None:
    import yaml

    rules = yaml.safe_load((REPO_ROOT / "rules" / "assistants-exporter.rules.yml").read_text())
    shipped = {r["alert"]: (r["labels"]["severity"], r.get("for", "0s"))
               for g in rules["groups"] for r in g["rules"] if "alert" in r}
    doc = (REPO_ROOT / "docs" / "dashboards-and-alerts.md").read_text()
    rows = re.findall(r"^\| (Assistants\w+) \| (\w+) \| (.+) \| (\w+) \|$", doc, re.M)
    documented = {name: (severity, for_) for name, severity, _cond, for_ in rows}
    assert documented == shipped
    from mixin.config import DEFAULT

    t = DEFAULT.thresholds
    conditions = {name: cond for name, _s, cond, _f in rows}
    assert f"> {t.failure_ratio:.0%}" in conditions["AssistantsRunFailureSpike"]
    assert f"≥ {t.failure_min_finished} finished" in conditions["AssistantsRunFailureSpike"]
    assert f"> {t.expiry_ratio:.0%}" in conditions["AssistantsRunExpirySpike"]
    assert f"> {t.queued_age / 60:g}m" in conditions["AssistantsRunsStuckQueued"]
    assert f"> {t.requires_action_age / 60:g}m" in conditions["AssistantsRunsRequiresActionNearExpiry"]
    assert f"older than {t.poll_stale_age / 60:g}m" in conditions["AssistantsExporterPollingStale"]
    assert f"> {t.rate_limited_share:.0%}" in conditions["AssistantsExporterRateLimited"]
