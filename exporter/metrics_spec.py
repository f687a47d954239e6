"""The public metric contract, one metric in one place: name, type, labels, help, buckets and the label
values exported at zero before they first occur. README, dashboards, rules, the store and the collector are
all checked against or derived from this table; no other module spells a metric name.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter import statuses
from exporter.cardinality import CAPPED_LABELS, DEFAULT_LIMITS
from exporter.model import INVALID_REASONS

RUN_LABELS_CHOICES: tuple[str, ...] = ("assistant_id", "model")
# Every run metric carries the source that first reported the run (threads, push, ...).
SOURCE_LABEL = "source"

# Histogram buckets, seconds: from a second to an hour (runs expire after 10 minutes in the API).
DURATION_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
POLL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATIO_WINDOWS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}

# Values every dashboard and alert may rely on, exported at 0 before the first occurrence.
# The Assistants codes come first; the rest are the Responses API's ResponseErrorCode values.
KNOWN_ERROR_CODES: tuple[str, ...] = (
    "server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch", "bio_policy",
    "vector_store_timeout", "invalid_image", "invalid_image_format", "invalid_base64_image", "invalid_image_url",
    "image_too_large", "image_too_small", "image_parse_error", "image_content_policy_violation",
    "invalid_image_mode", "image_file_too_large", "unsupported_image_media_type", "empty_image_file",
    "failed_to_download_image", "image_file_not_found",
)
# Error codes are an open set: past this many distinct values, further new codes count as `other`.
MAX_ERROR_CODES = DEFAULT_LIMITS["code"]  # the default of --max-error-codes
OTHER_ERROR_CODE = "other"
KNOWN_INCOMPLETE_REASONS: tuple[str, ...] = ("max_completion_tokens", "max_prompt_tokens", "max_output_tokens",
                                             "content_filter")
TOKEN_TYPES: tuple[str, ...] = ("prompt", "completion")
THREAD_STATES: tuple[str, ...] = ("active", "idle", "gone", "failing")
PUSH_OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "stale", "invalid")
WEBHOOK_OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "bad_signature", "stale", "malformed", "too_large",
                                     "timeout")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: str  # gauge | counter | histogram
    labels: tuple[str, ...]  # the metric's own labels; run metrics also get the --labels extras after these
    help: str
    run_metric: bool = False  # gets the --labels extra labels
    buckets: tuple[float, ...] = ()  # histograms only
    zeros: tuple[str, ...] = ()  # values of the first label exported at 0 until they occur

    @property
    def sample_name(self) -> str:
        """The family name prometheus_client wants: it appends _total to counters itself."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def label_names(self, extra_labels: tuple[str, ...]) -> tuple[str, ...]:
        return (*self.labels, *extra_labels) if self.run_metric else self.labels


def _run(name: str, type_: str, first: str, help_: str, zeros: tuple[str, ...],
         buckets: tuple[float, ...] = ()) -> MetricSpec:
    return MetricSpec(name, type_, (first, SOURCE_LABEL), help_, True, buckets, zeros)


RUNS = _run("assistants_runs", "gauge", "status",
            "Runs known whose current status is status; finished runs stay for --terminal-retention.",
            statuses.ALL_STATUSES)
RUNS_FINISHED = _run("assistants_runs_finished_total", "counter", "status",
                     "Runs that reached a terminal status, each counted once.", statuses.TERMINAL_STATUSES)
STATUS_DURATION = _run("assistants_run_status_duration_seconds", "histogram", "status",
                       "Time spent in one non-terminal status, observed when that stint ends.",
                       statuses.NON_TERMINAL, DURATION_BUCKETS)
RUN_DURATION = _run("assistants_run_duration_seconds", "histogram", "status",
                    "Run creation to end, by terminal status.", statuses.TERMINAL_STATUSES, DURATION_BUCKETS)
OLDEST_AGE = _run("assistants_run_oldest_age_seconds", "gauge", "status",
                  "Time the longest-waiting run has spent in its current non-terminal status.",
                  statuses.NON_TERMINAL)
FAILURE_RATIO = _run("assistants_run_failure_ratio", "gauge", "window",
                     "Failed / finished among runs that finished in the window (0 when none).",
                     tuple(RATIO_WINDOWS))
EXPIRY_RATIO = _run("assistants_run_expiry_ratio", "gauge", "window",
                    "Expired / finished among runs that finished in the window (0 when none).",
                    tuple(RATIO_WINDOWS))
ERRORS = _run("assistants_run_errors_total", "counter", "code", "Failed runs, by last_error.code.",
              KNOWN_ERROR_CODES)
INCOMPLETE = _run("assistants_run_incomplete_total", "counter", "reason",
                  "Incomplete runs, by incomplete_details.reason.", KNOWN_INCOMPLETE_REASONS)
TOKENS = _run("assistants_run_tokens_total", "counter", "type",
              "Tokens used by finished runs, by type (prompt, completion).", TOKEN_TYPES)

API_UP = MetricSpec("assistants_exporter_api_up", "gauge", (SOURCE_LABEL,),
                    "1 if the source's last poll cycle reached its API; 0 also while its requests go unanswered.")
API_REQUESTS = MetricSpec("assistants_exporter_api_requests_total", "counter", (SOURCE_LABEL, "endpoint", "code"),
                          "API requests made, by source, endpoint and HTTP status (or timeout, connection_error).")
RATE_LIMIT_REMAINING = MetricSpec("assistants_exporter_rate_limit_remaining_requests", "gauge", (),
                                  "The last x-ratelimit-remaining-requests header seen.")
POLL_DURATION = MetricSpec("assistants_exporter_poll_duration_seconds", "histogram", (),
                           "Duration of one poll of one thread, all pages included.", buckets=POLL_BUCKETS)
LAST_POLL_SUCCESS = MetricSpec("assistants_exporter_last_poll_success_timestamp_seconds", "gauge", (),
                               "Unix time of the last poll that reached the API.")
THREADS = MetricSpec("assistants_exporter_threads", "gauge", ("state",),
                     "Threads watched, by state (active, idle, gone, failing).",
                     zeros=THREAD_STATES)
INVALID_OBJECTS = MetricSpec("assistants_exporter_invalid_objects_total", "counter", ("reason",),
                             "Items from the API skipped or downgraded as malformed, by reason.",
                             zeros=INVALID_REASONS)
PUSH_REQUESTS = MetricSpec("assistants_exporter_push_requests_total", "counter", ("code",),
                           "Requests to the write endpoints (push, registration), by HTTP status.")
PUSH_ITEMS = MetricSpec("assistants_exporter_push_items_total", "counter", ("outcome",),
                        "Pushed run items, by outcome (accepted, duplicate, stale, invalid).", zeros=PUSH_OUTCOMES)
DISCOVERED_THREADS = MetricSpec("assistants_exporter_discovered_threads_total", "counter", (),
                                "Scopes (threads, sessions) that discovery added to the watch list.")
WEBHOOKS = MetricSpec("assistants_exporter_webhooks_total", "counter", ("type", "outcome"),
                      "Webhook deliveries to /webhooks/openai, by event type (response.*, agent.session.*, other; "
                      "unverified before the signature is checked) and outcome (accepted, duplicate, bad_signature, "
                      "stale, malformed, too_large, timeout).")
STORE_ERRORS = MetricSpec("assistants_exporter_store_errors_total", "counter", (),
                          "Commits to the state file that failed (and are retried).")
LABEL_OVERFLOW = MetricSpec("assistants_exporter_label_values_overflow_total", "counter", ("label",),
                            "Runs counted under `other` because their label's cap of distinct values was reached "
                            "(--max-assistant-ids, --max-models, --max-error-codes, --max-incomplete-reasons).",
                            zeros=CAPPED_LABELS)
SHARD = MetricSpec("assistants_exporter_shard", "gauge", ("shard", "total_shards"),
                   "Always 1; this replica's shard and the number of shards (--shard, --total-shards).")
BUILD_INFO = MetricSpec("assistants_exporter_build_info", "gauge", ("version",),
                        "Always 1; the exporter's version.")

METRICS: tuple[MetricSpec, ...] = (
    RUNS, RUNS_FINISHED, STATUS_DURATION, RUN_DURATION, OLDEST_AGE, FAILURE_RATIO, EXPIRY_RATIO, ERRORS,
    INCOMPLETE, TOKENS, API_UP, API_REQUESTS, RATE_LIMIT_REMAINING, POLL_DURATION, LAST_POLL_SUCCESS, THREADS,
    INVALID_OBJECTS, PUSH_REQUESTS, PUSH_ITEMS, DISCOVERED_THREADS, WEBHOOKS, STORE_ERRORS, LABEL_OVERFLOW, SHARD,
    BUILD_INFO,
)

METRIC_NAMES: frozenset[str] = frozenset(m.name for m in METRICS)
_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}
BUCKETS: dict[str, tuple[float, ...]] = {m.name: m.buckets for m in METRICS if m.type == "histogram"}


def spec(name: str) -> MetricSpec:
    return _BY_NAME[name]
