"""The public metric contract: names, types and labels. README, dashboards and tests are checked against it."""

from __future__ import annotations

from dataclasses import dataclass

RUN_LABELS_CHOICES: tuple[str, ...] = ("assistant_id", "model")

# Histogram buckets, seconds: from a second to an hour (runs expire after 10 minutes in the API).
DURATION_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
POLL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATIO_WINDOWS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: str  # gauge | counter | histogram
    labels: tuple[str, ...]
    help: str
    run_metric: bool = False  # gets the --labels extra labels


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("assistants_runs", "gauge", ("status",),
               "Runs known whose current status is status; finished runs stay for --terminal-retention.", True),
    MetricSpec("assistants_runs_finished_total", "counter", ("status",),
               "Runs that reached a terminal status, each counted once.", True),
    MetricSpec("assistants_run_status_duration_seconds", "histogram", ("status",),
               "Time spent in one non-terminal status, observed when that stint ends.", True),
    MetricSpec("assistants_run_duration_seconds", "histogram", ("status",),
               "Run creation to end, by terminal status.", True),
    MetricSpec("assistants_run_oldest_age_seconds", "gauge", ("status",),
               "Time the longest-waiting run has spent in its current non-terminal status.", True),
    MetricSpec("assistants_run_failure_ratio", "gauge", ("window",),
               "Failed / finished among runs that finished in the window (0 when none).", True),
    MetricSpec("assistants_run_expiry_ratio", "gauge", ("window",),
               "Expired / finished among runs that finished in the window (0 when none).", True),
    MetricSpec("assistants_run_errors_total", "counter", ("code",), "Failed runs, by last_error.code.", True),
    MetricSpec("assistants_run_incomplete_total", "counter", ("reason",),
               "Incomplete runs, by incomplete_details.reason.", True),
    MetricSpec("assistants_run_tokens_total", "counter", ("type",),
               "Tokens used by finished runs, by type (prompt, completion).", True),
    MetricSpec("assistants_exporter_api_up", "gauge", (), "1 if the last poll reached the API."),
    MetricSpec("assistants_exporter_api_requests_total", "counter", ("endpoint", "code"),
               "API requests made, by endpoint and HTTP status (or timeout, connection_error)."),
    MetricSpec("assistants_exporter_rate_limit_remaining_requests", "gauge", (),
               "The last x-ratelimit-remaining-requests header seen."),
    MetricSpec("assistants_exporter_poll_duration_seconds", "histogram", (),
               "Duration of one poll of one thread, all pages included."),
    MetricSpec("assistants_exporter_last_poll_success_timestamp_seconds", "gauge", (),
               "Unix time of the last poll that reached the API."),
    MetricSpec("assistants_exporter_threads", "gauge", ("state",), "Threads watched, by state (active, idle, gone)."),
    MetricSpec("assistants_exporter_invalid_objects_total", "counter", ("reason",),
               "Items from the API skipped or downgraded as malformed, by reason."),
    MetricSpec("assistants_exporter_build_info", "gauge", ("version",), "Always 1; the exporter's version."),
)

METRIC_NAMES: frozenset[str] = frozenset(m.name for m in METRICS)


def spec(name: str) -> MetricSpec:
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(name)
