"""The one place to change alert thresholds, `for:` durations, the runbook location and dashboard uids."""

from __future__ import annotations

from dataclasses import dataclass, field

# Change this to where your copy of docs/runbook.md is published; alerts link to `<base>#<anchor>`.
RUNBOOK_BASE = "https://github.com/assistants-exporter/assistants-exporter/blob/main/docs/runbook.md"

# The `up` series of the exporter's scrape job; `AssistantsExporterDown` assumes job names start with this.
EXPORTER_JOB_REGEX = "assistants-exporter.*"

RULES_FILE = "rules/assistants-exporter.rules.yml"
DASHBOARD_TAG = "assistants-exporter"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Alert thresholds. Ratios are fractions (0.10 = 10%), ages and durations are seconds."""

    failure_ratio: float = 0.10  # failed / finished over 5m, per assistant_id
    failure_min_finished: int = 20  # finished runs in the same 5m, so 1 failure out of 2 runs does not page
    failure_for: str = "5m"
    expiry_ratio: float = 0.05  # expired / finished over 5m, per assistant_id
    expiry_min_finished: int = 20
    expiry_for: str = "5m"
    queued_age: float = 120.0  # oldest run waiting in queued
    queued_for: str = "5m"
    # Runs expire 10 minutes after creation when left in requires_action: 7m + `for: 1m` leaves 2 minutes.
    requires_action_age: float = 420.0
    requires_action_for: str = "1m"
    exporter_down_for: str = "5m"
    api_down_for: str = "5m"
    poll_stale_age: float = 600.0  # seconds since the last poll that reached the API
    poll_stale_for: str = "2m"
    rate_limited_share: float = 0.10  # share of API requests answered 429, over 5m
    rate_limited_for: str = "15m"


@dataclass(frozen=True, slots=True)
class MixinConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    runbook_base: str = RUNBOOK_BASE
    exporter_job_regex: str = EXPORTER_JOB_REGEX


DEFAULT = MixinConfig()
