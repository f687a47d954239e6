"""The Grafana dashboards; `python -m mixin.dashboards` writes dashboards/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixin import slo
from mixin.config import DASHBOARD_TAG, DEFAULT, BurnRateWindow, MixinConfig
from mixin.grafana import (
    Json,
    Step,
    Target,
    bargauge,
    dashboard,
    datasource_variable,
    heatmap,
    query_variable,
    row,
    stat,
    timeseries,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_UID = "assistants-runs-overview"
HEALTH_UID = "assistants-exporter-health"
SLOS_UID = "assistants-slos"

# Label filters from the template variables; `=~` because the variables are multi-value. `source` is
# matched with `=~` too: its All value `.*` also matches series from exporters that do not export it.
RUN_FILTER = 'job=~"$job", instance=~"$instance", source=~"$source", assistant_id=~"$assistant_id"'
EXPORTER_FILTER = 'job=~"$job", instance=~"$instance"'
SOURCE_FILTER = 'job=~"$job", instance=~"$instance", source=~"$source"'
SLO_FILTER = 'source=~"$source", assistant_id=~"$assistant_id"'
BY_LEVEL = "{{assistant_id}} {{source}}"
RATE = "$__rate_interval"
QUANTILES: tuple[tuple[str, str], ...] = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))


def sel(metric: str, base: str, extra: str = "") -> str:
    return f"{metric}{{{base}{', ' + extra if extra else ''}}}"


def run_sel(metric: str, extra: str = "") -> str:
    return sel(metric, RUN_FILTER, extra)


def exp_sel(metric: str, extra: str = "") -> str:
    return sel(metric, EXPORTER_FILTER, extra)


def share(by: str, part: str, total: str, window: str) -> str:
    """part/total of two counter selectors' rates; a missing `part` series means none, so it reads as 0."""
    num = f"sum by ({by}) (rate({part}[{window}]))"
    den = f"sum by ({by}) (rate({total}[{window}]))"
    return f"(\n  {num}\n  or\n  {den} * 0\n)\n/\nclamp_min({den}, 1e-9)"


def quantiles(buckets: str, by: str, qs: tuple[tuple[str, str], ...] = QUANTILES) -> list[Target]:
    """One target per quantile over a `_bucket` selector, legend `<by> p95`."""
    return [
        Target(f"histogram_quantile({q}, sum by (le, {by}) (rate({buckets}[{RATE}])))",
               f"{{{{{by}}}}} {name}")
        for q, name in qs
    ]


def alert_steps(threshold: float) -> tuple[Step, ...]:
    return (Step("green"), Step("red", threshold))


def text(paragraph: str) -> str:
    """Descriptions are written as wrapped triple-quoted blocks; Grafana gets one line."""
    return " ".join(paragraph.split())


def runs_overview(cfg: MixinConfig) -> Json:
    t = cfg.thresholds
    runs = run_sel("assistants_runs")
    finished = run_sel("assistants_runs_finished_total")
    failed = run_sel("assistants_runs_finished_total", 'status="failed"')
    expired = run_sel("assistants_runs_finished_total", 'status="expired"')
    errors = run_sel("assistants_run_errors_total")
    incomplete = run_sel("assistants_run_incomplete_total")
    tokens = run_sel("assistants_run_tokens_total")
    status_buckets = run_sel("assistants_run_status_duration_seconds_bucket")
    run_buckets = run_sel("assistants_run_duration_seconds_bucket")
    failure_1h = run_sel("assistants_run_failure_ratio", 'window="1h"')
    expiry_1h = run_sel("assistants_run_expiry_ratio", 'window="1h"')
    oldest = run_sel("assistants_run_oldest_age_seconds")
    oldest_steps = (Step("green"), Step("orange", t.queued_age), Step("red", t.requires_action_age))
    panels: list[Json] = [
        row("Now"),
        stat("Runs by status, now", text("""
            Runs the exporter currently knows, by their current status. Finished runs stay counted for the
            exporter's --terminal-retention, so terminal statuses are a recent-history count, not a total.
            If queued or requires_action keeps growing, check the oldest-run panel and the runbook
            (AssistantsRunsStuckQueued, AssistantsRunsRequiresActionNearExpiry)."""),
             Target(f"sum by (status) ({runs})", "{{status}}"), text_mode="value_and_name", width=12),
        stat("Finished runs per minute", text("""
            Runs that reached any terminal status per minute, over the selection. A drop to zero while runs
            are still being created usually means runs are stuck (see oldest run per status) or the exporter
            stopped polling (see the exporter health dashboard)."""),
             Target(f"sum(rate({finished}[{RATE}])) * 60"), decimals=1),
        stat("Failure ratio (1h, worst assistant)", text(f"""
            The exporter's own failed/finished ratio over the last hour, for the worst assistant in the
            selection. Red from {t.failure_ratio:.0%}, the AssistantsRunFailureSpike threshold (the alert
            uses a 5-minute window). When red, look at failed runs by error code below."""),
             Target(f"max({failure_1h})"), unit="percentunit", steps=alert_steps(t.failure_ratio),
             decimals=1),
        stat("Expiry ratio (1h, worst assistant)", text(f"""
            The exporter's own expired/finished ratio over the last hour, for the worst assistant in the
            selection. Red from {t.expiry_ratio:.0%}, the AssistantsRunExpirySpike threshold. Expired runs
            waited too long in requires_action: the client did not submit tool outputs in time."""),
             Target(f"max({expiry_1h})"), unit="percentunit", steps=alert_steps(t.expiry_ratio), decimals=1),
        row("Throughput"),
        timeseries("Runs by status", text("""
            Runs known to the exporter by current status, stacked. Growth in queued or in_progress means the
            backend is slower than the load; growth in requires_action means the client is not submitting
            tool outputs. unknown counts statuses this exporter does not recognise: if it is not zero,
            upgrade the exporter."""),
                   Target(f"sum by (status) ({runs})", "{{status}}"), stack=True),
        timeseries("Finish rate by status", text("""
            Runs reaching each terminal status per second (from a counter that survives exporter restarts).
            A rise in failed, expired or incomplete relative to completed is what the failure and expiry
            alerts measure."""),
                   Target(f"sum by (status) (rate({finished}[{RATE}]))", "{{status}}"), unit=" runs/s"),
        timeseries("Finished runs by source", text("""
            Where runs come from: runs finished per minute by the exporter's source (threads: polled
            Assistants threads; push: runs pushed to the exporter; later responses and sessions). A source
            that drops to zero while the others continue points at that source's configuration or API.
            Exporters older than the source label show one unnamed line."""),
                   Target(f"sum by (source) (rate({finished}[{RATE}])) * 60", "{{source}}"), unit=" runs/min",
                   stack=True, width=24, height=6),
        row("Outcomes"),
        timeseries("Failure ratio", text(f"""
            failed / finished runs per assistant over 5 minutes (what AssistantsRunFailureSpike evaluates;
            it also needs at least {t.failure_min_finished} finished runs in those 5 minutes) and over
            1 hour. The dashed line is the alert threshold, {t.failure_ratio:.0%}. When above it, check
            failed runs by error code and the runbook."""),
                   Target(share("assistant_id", failed, finished, "5m"), "{{assistant_id}} 5m"),
                   Target(share("assistant_id", failed, finished, "1h"), "{{assistant_id}} 1h"),
                   unit="percentunit", steps=alert_steps(t.failure_ratio)),
        timeseries("Expiry ratio", text(f"""
            expired / finished runs per assistant over 5 minutes (what AssistantsRunExpirySpike evaluates;
            it also needs at least {t.expiry_min_finished} finished runs in those 5 minutes) and over
            1 hour. The dashed line is the alert threshold, {t.expiry_ratio:.0%}. Runs expire 10 minutes
            after creation when tool outputs are not submitted: check the client's tool handling."""),
                   Target(share("assistant_id", expired, finished, "5m"), "{{assistant_id}} 5m"),
                   Target(share("assistant_id", expired, finished, "1h"), "{{assistant_id}} 1h"),
                   unit="percentunit", steps=alert_steps(t.expiry_ratio)),
        timeseries("Failed runs by error code", text("""
            Failed runs per second by last_error.code. server_error points at the provider,
            rate_limit_exceeded at your quota, invalid_prompt at your inputs or tools. The runbook
            (AssistantsRunFailureSpike) lists what to do for each."""),
                   Target(f"sum by (code) (rate({errors}[{RATE}]))", "{{code}}"), unit=" runs/s", width=8),
        bargauge("Error codes in the selected range", text("""
            Failed runs by last_error.code over the whole time range picked above, largest first: the
            quickest way to see which error dominates an incident."""),
                 Target(f"sort_desc(sum by (code) (increase({errors}[$__range])))", "{{code}}", instant=True),
                 width=8),
        timeseries("Incomplete runs by reason", text("""
            Runs that ended incomplete per second, by incomplete_details.reason (token limits). A rise means
            prompts or answers outgrew max_prompt_tokens / max_completion_tokens: raise the limits on the
            run or shorten the thread (truncation_strategy)."""),
                   Target(f"sum by (reason) (rate({incomplete}[{RATE}]))", "{{reason}}"),
                   unit=" runs/s", width=8),
        row("Latency"),
        timeseries("Time in status (p50 / p95 / p99)", text("""
            How long runs stayed in each non-terminal status, from stints that ended in the interval. High
            queued means the provider is backlogged; high requires_action means your client is slow to
            submit tool outputs (runs expire 10 minutes after creation); high in_progress means long
            generations or tool loops."""),
                   *quantiles(status_buckets, "status"), unit="s"),
        heatmap("Time in status distribution", text("""
            The distribution of time spent in non-terminal statuses (all statuses together), from the
            exporter's histogram buckets. A band moving up means runs wait longer; the percentile panel shows
            which status."""),
                Target(f"sum by (le) (increase({status_buckets}[{RATE}]))", "{{le}}", fmt="heatmap")),
        timeseries("Run duration by outcome (p50 / p95)", text("""
            Creation to end, by terminal status. Long completed runs mean slow answers; expired runs sit at
            the 10-minute expiry by definition; failures that take long often come from upstream
            timeouts."""),
                   *quantiles(run_buckets, "status", QUANTILES[:2]), unit="s"),
        timeseries("Oldest run per status", text(f"""
            How long the longest-waiting run has been in each non-terminal status right now. Dashed lines:
            the AssistantsRunsStuckQueued threshold ({t.queued_age:g}s, for queued) and the
            AssistantsRunsRequiresActionNearExpiry threshold ({t.requires_action_age:g}s, for
            requires_action). A line that only grows means one run is stuck: find it with the runs API."""),
                   Target(f"max by (status) ({oldest})", "{{status}}"), unit="s", steps=oldest_steps),
        row("Usage"),
        timeseries("Tokens per second", text("""
            Prompt and completion tokens used by finished runs, per second. A jump without more runs means
            longer prompts (growing threads, large files) or longer answers; it drives cost and incomplete
            runs."""),
                   Target(f"sum by (type) (rate({tokens}[{RATE}]))", "{{type}}"), unit=" tokens/s"),
        timeseries("Tokens per finished run", text("""
            Average tokens per finished run, by type. Rising prompt tokens per run usually means threads keep
            growing; consider a truncation_strategy or starting new threads."""),
                   Target(f"sum by (type) (rate({tokens}[{RATE}]))\n/ on () group_left\n"
                          f"clamp_min(sum(rate({finished}[{RATE}])), 1e-9)", "{{type}}"),
                   unit=" tokens"),
    ]
    variables = [
        *exporter_variables(),
        source_variable(exp_sel("assistants_runs")),
        query_variable("assistant_id", "Assistant",
                       'label_values(assistants_runs{job=~"$job", instance=~"$instance", source=~"$source"}, '
                       "assistant_id)"),
    ]
    return dashboard(RUNS_UID, "Assistants / Runs overview",
                     "Assistants v2 runs as seen by assistants-exporter: load, outcomes, latency and tokens.",
                     [DASHBOARD_TAG], variables, panels)


def exporter_variables() -> list[Json]:
    return [
        datasource_variable(),
        query_variable("job", "Job", "label_values(assistants_exporter_build_info, job)"),
        query_variable("instance", "Instance",
                       'label_values(assistants_exporter_build_info{job=~"$job"}, instance)'),
    ]


def source_variable(selector: str) -> Json:
    """Where runs come from (threads, push, ...); with All (`.*`) also series without the label."""
    return query_variable("source", "Source", f"label_values({selector}, source)")


def exporter_health(cfg: MixinConfig) -> Json:
    t = cfg.thresholds
    requests = sel("assistants_exporter_api_requests_total", SOURCE_FILTER)
    throttled = sel("assistants_exporter_api_requests_total", SOURCE_FILTER, 'code="429"')
    last_poll = exp_sel("assistants_exporter_last_poll_success_timestamp_seconds")
    poll_age = f"time() - max by (instance) ({last_poll})"
    remaining = f"min by (instance) ({exp_sel('assistants_exporter_rate_limit_remaining_requests')})"
    api_up = f"min by (instance) ({sel('assistants_exporter_api_up', SOURCE_FILTER)})"
    threads = f"sum by (state) ({exp_sel('assistants_exporter_threads')})"
    polls = exp_sel("assistants_exporter_poll_duration_seconds_count")
    invalid = exp_sel("assistants_exporter_invalid_objects_total")
    up_steps = (Step("red"), Step("green", 1))
    panels: list[Json] = [
        row("Now"),
        stat("Scraped", text("""
            Prometheus's up series for each exporter instance: 1 when the last scrape worked. 0 means
            Prometheus cannot reach /metrics (AssistantsExporterDown): check the process, its --listen
            address and the scrape config."""),
             Target(f"up{{{EXPORTER_FILTER}}}", "{{instance}}"), steps=up_steps),
        stat("API reachable", text("""
            1 when the exporter's last poll reached the runs API. 0 means run metrics are frozen
            (AssistantsExporterApiUnreachable): check the exporter log for the error, the API key and
            network egress."""),
             Target(api_up, "{{instance}}"), steps=up_steps),
        stat("Last successful poll", text(f"""
            Seconds since a poll last reached the API. Red from {t.poll_stale_age:g}s, the
            AssistantsExporterPollingStale threshold. Growing while the API is reachable means the poll loop
            is stuck: restart the exporter and report the log."""),
             Target(poll_age, "{{instance}}"), unit="s", steps=alert_steps(t.poll_stale_age)),
        stat("Rate-limit remaining", text("""
            The last x-ratelimit-remaining-requests header seen: requests left in the provider's current
            window. Near 0 means the exporter (or other clients on the same key) uses the whole quota: raise
            --poll-interval or use a separate key."""),
             Target(remaining, "{{instance}}"), steps=(Step("red"), Step("orange", 1), Step("green", 10))),
        stat("Threads watched", text("""
            Threads the exporter polls, by state: active (has unfinished runs), idle, gone (404 from the
            API). Many gone threads mean the watch list is stale: prune it."""),
             Target(threads, "{{state}}"), text_mode="value_and_name"),
        stat("Version", text("""
            Exporter versions running in the selection. More than one outside a rollout means instances
            were not all upgraded."""),
             Target(f"count by (version) ({exp_sel('assistants_exporter_build_info')})", "{{version}}"),
             text_mode="name"),
        row("API"),
        timeseries("API requests by endpoint and code", text("""
            Requests the exporter makes per second, by endpoint and HTTP status (or timeout,
            connection_error). 401/403 mean a bad key; 404 on a thread means it was deleted; 429 is rate
            limiting; 5xx and timeouts are the provider."""),
                   Target(f"sum by (endpoint, code) (rate({requests}[{RATE}]))", "{{endpoint}} {{code}}"),
                   unit="reqps"),
        timeseries("429 share", text(f"""
            Share of API requests answered 429 (rate limited). The dashed line is the
            AssistantsExporterRateLimited threshold, {t.rate_limited_share:.0%} (it alerts after
            {t.rate_limited_for} above it, over a 5-minute window). Raise --poll-interval or
            --idle-poll-interval, or watch fewer threads."""),
                   Target(share("instance", throttled, requests, RATE), "{{instance}}"),
                   unit="percentunit", steps=alert_steps(t.rate_limited_share), max_=1),
        timeseries("Rate-limit headroom", text("""
            The last x-ratelimit-remaining-requests header: requests left in the provider's window. A
            saw-tooth touching 0 means the quota is exhausted every window."""),
                   Target(remaining, "{{instance}}")),
        timeseries("Poll duration (p50 / p95 / p99)", text("""
            Time to poll one thread, all pages included. Rising with the API's latency is expected; rising
            alone usually means threads with very many runs (pagination): lower --terminal-retention or
            archive old threads."""),
                   *quantiles(exp_sel("assistants_exporter_poll_duration_seconds_bucket"), "instance"),
                   unit="s"),
        row("Polling"),
        timeseries("Time since last successful poll", text(f"""
            Seconds since a poll last reached the API. The dashed line is {t.poll_stale_age:g}s, the
            AssistantsExporterPollingStale threshold. It should stay near the poll interval."""),
                   Target(poll_age, "{{instance}}"), unit="s", steps=alert_steps(t.poll_stale_age)),
        timeseries("Polls per second", text("""
            Thread polls completed per second. It should follow the number of active threads divided by
            --poll-interval; a drop to zero means the poll loop stopped."""),
                   Target(f"sum by (instance) (rate({polls}[{RATE}]))", "{{instance}}"), unit="ops"),
        timeseries("Threads by state", text("""
            Watched threads by state, stacked. active threads are polled every --poll-interval, idle ones
            every --idle-poll-interval, gone ones rarely."""),
                   Target(threads, "{{state}}"), stack=True),
        timeseries("Invalid objects by reason", text("""
            Items from the API skipped or downgraded as malformed, per second, by reason. Non-zero means the
            API sent something this exporter does not understand (unknown_status: a new status): upgrade the
            exporter or report it with the exporter's log."""),
                   Target(f"sum by (reason) (rate({invalid}[{RATE}]))", "{{reason}}"),
                   unit="ops"),
    ]
    return dashboard(HEALTH_UID, "Assistants / Exporter health",
                     "Is assistants-exporter scraping, polling and staying within the API's rate limits?",
                     [DASHBOARD_TAG], [*exporter_variables(), source_variable(exp_sel("assistants_exporter_api_up"))],
                     panels)


def burn_panel(sli: slo.SLI, w: BurnRateWindow) -> Json:
    budget = f"{sli.budget():g}"
    action = "pages" if w.severity == "critical" else "opens a ticket"
    return timeseries(
        f"{sli.title} burn rate, {w.long} and {w.short}", text(f"""
            How many times faster than sustainable the {sli.title.lower()} error budget is spent, over
            {w.long} and over {w.short}, per assistant and source (1 = the budget lasts exactly
            {sli.window}). {sli.alert} {action} when both lines are above the dashed line at {w.factor:g}x
            (with at least the volume guard's runs in {w.long}). The {w.short} line falling back first means
            the problem has stopped."""),
        *(Target(f"{sli.ratio_record(window)}{{{SLO_FILTER}}} / {budget}", f"{BY_LEVEL} {window}")
          for window in (w.long, w.short)),
        unit="x", steps=alert_steps(w.factor), width=12)


def slo_panels(cfg: MixinConfig, sli: slo.SLI) -> list[Json]:
    budget = f"{sli.budget():g}"
    ratio = slo.ratio_expr(cfg, sli, sli.window, (SLO_FILTER,)).rstrip()
    return [
        row(f"{sli.title}: objective {sli.target:.4g} over {sli.window}"),
        stat(f"{sli.title}: error budget remaining", text(f"""
            Share of the {sli.window} error budget ({budget} of events may be bad: {sli.errors_meaning})
            not yet spent, per assistant and source, from the counters over the last {sli.window}. Below 0
            the objective is missed for this period; freeze risky changes until it recovers."""),
             Target(f"1 - (\n{ratio}\n) / {budget}", BY_LEVEL), unit="percentunit",
             steps=(Step("red"), Step("orange", 0), Step("green", 0.25)), decimals=1, width=12, height=6),
        stat(f"{sli.title}: error ratio over {sli.window}", text(f"""
            Bad events / all events over the last {sli.window} ({sli.errors_meaning}), per assistant and
            source. Red from {budget}, where the objective of {sli.target:.4g} is missed."""),
             Target(ratio, BY_LEVEL), unit="percentunit",
             steps=alert_steps(sli.budget()), decimals=2, width=12, height=6),
        *(burn_panel(sli, w) for w in cfg.slos.windows),
    ]


def slos(cfg: MixinConfig) -> Json:
    panels = [p for sli in slo.slis(cfg) for p in slo_panels(cfg, sli)]
    # No job or instance: the recording rules sum over every exporter, as the alerts do.
    variables = [
        datasource_variable(),
        source_variable("assistants_runs"),
        query_variable("assistant_id", "Assistant",
                       f"label_values({slo.slis(cfg)[0].ratio_record('5m')}{{source=~\"$source\"}}, assistant_id)"),
    ]
    return dashboard(SLOS_UID, "Assistants / SLOs",
                     "Error budgets and burn rates of the run success and queue latency objectives "
                     "(rules/assistants-exporter-slos.rules.yml).",
                     [DASHBOARD_TAG], variables, panels)


def build(cfg: MixinConfig = DEFAULT) -> dict[str, Json]:
    """File name under dashboards/ -> dashboard JSON."""
    boards = {f"{RUNS_UID}.json": runs_overview(cfg), f"{HEALTH_UID}.json": exporter_health(cfg)}
    if cfg.slos.enabled:
        boards[f"{SLOS_UID}.json"] = slos(cfg)
    return boards


def render(board: Json) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def write(root: Path = REPO_ROOT, cfg: MixinConfig = DEFAULT) -> list[Path]:
    out = root / "dashboards"
    out.mkdir(exist_ok=True)
    paths = []
    for name, board in build(cfg).items():
        path = out / name
        path.write_text(render(board), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """Usage: python -m mixin.dashboards [REPO_ROOT]"""
    for path in write(Path(argv[0]) if argv else REPO_ROOT):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
