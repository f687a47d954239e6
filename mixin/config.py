"""The one place to change alert thresholds, `for:` durations, SLOs, the runbook location and dashboard uids."""

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
    label_overflow_for: str = "15m"  # runs counted under `other` within the last hour, for this long


@dataclass(frozen=True, slots=True)
class BurnRateWindow:
    """One multi-window burn-rate alert: budget burning `factor` times too fast over both windows."""

    long: str
    short: str
    factor: float
    severity: str  # critical pages someone, warning opens a ticket
    for_: str


# The Google SRE workbook's table (chapter "Alerting on SLOs"), for a 30-day objective: 14.4x over 1h spends
# 2% of the budget, 6x over 6h spends 5%, 3x over 1d 10%, 1x over 3d 10%.
BURN_RATE_WINDOWS: tuple[BurnRateWindow, ...] = (
    BurnRateWindow("1h", "5m", 14.4, "critical", "2m"),
    BurnRateWindow("6h", "30m", 6.0, "critical", "15m"),
    BurnRateWindow("1d", "2h", 3.0, "warning", "1h"),
    BurnRateWindow("3d", "6h", 1.0, "warning", "3h"),
)
# Error ratios are recorded over every window the alerts read.
SLO_RATIO_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True, slots=True)
class SuccessSLO:
    """Share of finished runs that did not fail or expire, per assistant_id and source."""

    target: float = 0.99
    window: str = "30d"
    cancelled_is_error: bool = False  # a user cancelling is usually not the service's fault
    incomplete_is_error: bool = False  # token limits hit are usually the caller's settings


@dataclass(frozen=True, slots=True)
class QueueLatencySLO:
    """Share of queued stints that ended within `threshold_seconds` (a DURATION_BUCKETS bound)."""

    target: float = 0.95
    window: str = "30d"
    threshold_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class SLOs:
    enabled: bool = True  # False: no SLO rules, no SLO dashboard; the threshold alerts remain
    run_success: SuccessSLO = field(default_factory=SuccessSLO)
    queue_latency: QueueLatencySLO = field(default_factory=QueueLatencySLO)
    windows: tuple[BurnRateWindow, ...] = BURN_RATE_WINDOWS
    # Events (finished runs, queued stints) in the long window, so two runs cannot page anyone.
    min_events: int = 20


@dataclass(frozen=True, slots=True)
class MixinConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    slos: SLOs = field(default_factory=SLOs)
    runbook_base: str = RUNBOOK_BASE
    exporter_job_regex: str = EXPORTER_JOB_REGEX


DEFAULT = MixinConfig()
