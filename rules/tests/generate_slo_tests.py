"""Writes the promtool unit tests of the SLO rules: `python rules/tests/generate_slo_tests.py`.

The input series and the expected alerts are written out here by hand, from the arithmetic in the comments;
only the alert texts are taken from mixin/slo.py, so a change of wording does not mean editing 60 entries.
tests/test_mixin_slo.py fails when the committed YAML differs from this script's output, and its mutation
tests rebuild the rules with a looser factor, window or guard and require these tests to fail.

Every test runs 100 runs (or queued stints) a minute, or 1000 per 10-minute sample, so the error ratio is
the failing share of that and the burn rate is error ratio / budget (run success 99%: budget 1%; queue
latency 95% within 30 s: budget 5%). Values in the alert texts are the long window's burn rate; where
Prometheus's rate() gives one sample less than the plain arithmetic (it does not extrapolate a counter back
past its first zero sample), the pinned value says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mixin import slo, yamlout  # noqa: E402
from mixin.config import DEFAULT  # noqa: E402

SHORT = ROOT / "rules" / "tests" / "assistants-exporter-slos.rules.test.yml"
LONG = ROOT / "rules" / "tests" / "assistants-exporter-slos-long.rules.test.yml"
PAIRS = {w.long: w for w in DEFAULT.slos.windows}
SLIS = {s.key: s for s in slo.slis(DEFAULT)}
ALL = ["1h", "6h", "1d", "3d"]
Alert = tuple[str, str, str, float]  # (sli key, assistant_id, long window, burn rate shown)
Json = dict[str, Any]


def humanize(value: float) -> str:
    """Go template `humanize` for values between 1 and 1000: four significant digits."""
    return f"{value:.4g}"


def expected(alert: Alert, source: str = "threads") -> Json:
    sli_key, assistant, long, burn = alert
    rule = slo.burn_alert(DEFAULT, SLIS[sli_key], PAIRS[long])
    subst = {"{{ $labels.assistant_id }}": assistant, "{{ $labels.source }}": source,
             "{{ $value | humanize }}": humanize(burn)}
    annotations = {}
    for key, text in rule["annotations"].items():
        for template, value in subst.items():
            text = text.replace(template, value)
        annotations[key] = text
    return {"exp_labels": {**rule["labels"], "assistant_id": assistant, "source": source},
            "exp_annotations": annotations}


def series(name: str, labels: dict[str, str], values: str) -> Json:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def finished(assistant: str, status: str, values: str, source: str = "threads") -> Json:
    return series("assistants_runs_finished_total",
                  {"assistant_id": assistant, "source": source, "status": status}, values)


def stints(assistant: str, le: str | None, values: str, status: str = "queued") -> Json:
    labels = {"assistant_id": assistant, "source": "threads", "status": status}
    if le is None:
        return series("assistants_run_status_duration_seconds_count", labels, values)
    return series("assistants_run_status_duration_seconds_bucket", {**labels, "le": le}, values)


def group(name: str, interval: str, inputs: list[Json], evals: list[tuple[str, list[Alert]]]) -> Json:
    """One promtool test; at each eval time, exactly the listed alerts fire (for both SLO alert names)."""
    cases = []
    for when, alerts in evals:
        for sli in SLIS.values():
            mine = sorted((a for a in alerts if a[0] == sli.key), key=lambda a: (a[1], ALL.index(a[2])))
            cases.append({"eval_time": when, "alertname": sli.alert, "exp_alerts": [expected(a) for a in mine]})
    return {"name": name, "interval": interval, "input_series": inputs, "alert_rule_test": cases}


def factors() -> Json:
    """Constant burn rates, 3h20m of them (the 3d alert's `for: 3h` has passed at 195m)."""
    n = 200
    inputs: list[Json] = []
    alerts: list[Alert] = []
    # Just above and just below each factor: 14.5 fires every pair, 14.3 all but the 14.4x one, and so on.
    for assistant, burn, fire in [
        ("asst_burn_14_5", 14.5, ALL), ("asst_burn_14_3", 14.3, ["6h", "1d", "3d"]),
        ("asst_burn_6_1", 6.1, ["6h", "1d", "3d"]), ("asst_burn_5_9", 5.9, ["1d", "3d"]),
        ("asst_burn_3_1", 3.1, ["1d", "3d"]), ("asst_burn_2_9", 2.9, ["3d"]),
        ("asst_burn_1_05", 1.05, ["3d"]), ("asst_burn_0_95", 0.95, []),
    ]:
        inputs += [finished(assistant, "completed", f"0+{100 - burn:g}x{n}"),
                   finished(assistant, "failed", f"0+{burn:g}x{n}")]
        alerts += [("success", assistant, w, burn) for w in fire]
    # Another source of the same assistant, all completed: alerts are per source, so it stays silent.
    inputs.append(finished("asst_burn_14_5", "completed", f"0+100x{n}", source="push"))
    # Expired runs are errors too; cancelled and incomplete ones are not (by default).
    inputs += [finished("asst_expired_14_5", "completed", f"0+85.5x{n}"),
               finished("asst_expired_14_5", "expired", f"0+14.5x{n}")]
    alerts += [("success", "asst_expired_14_5", w, 14.5) for w in ALL]
    inputs += [finished("asst_cancelled", "completed", f"0+30x{n}"),
               finished("asst_cancelled", "cancelled", f"0+50x{n}"),
               finished("asst_cancelled", "incomplete", f"0+20x{n}")]
    # The volume guard counts runs in the long window, at least 20. Every run fails (burn 100). 0.35 runs a
    # minute is 21 in the 1h window, 0.3 only 18; both reach 20 in the longer windows after about an hour,
    # which is too late for the 3d alert's `for: 3h` at 195m.
    inputs += [finished("asst_guard_21", "failed", f"0+0.35x{n}"), finished("asst_guard_18", "failed", f"0+0.3x{n}")]
    alerts += [("success", "asst_guard_21", w, 100) for w in ["1h", "6h", "1d"]]
    alerts += [("success", "asst_guard_18", w, 100) for w in ["6h", "1d"]]
    return group("run success: burn-rate factors, error statuses, sources and the volume guard", "1m", inputs,
                 [("195m", alerts)])


def queue_latency() -> Json:
    """Queued stints longer than 30 s; the bound is spelt `30` by some clients and `30.0` by others."""
    n = 200
    inputs = [
        # 80% slower than 30 s: burn 0.8 / 0.05 = 16, every pair fires. The 60 s bucket is not "good".
        stints("asst_slow", None, f"0+100x{n}"), stints("asst_slow", "30", f"0+20x{n}"),
        stints("asst_slow", "60", f"0+50x{n}"), stints("asst_slow", "+Inf", f"0+100x{n}"),
        # 4% slow: burn 0.8, silent; its slow in_progress stints do not count.
        stints("asst_fast", None, f"0+100x{n}"), stints("asst_fast", "30.0", f"0+96x{n}"),
        stints("asst_fast", "+Inf", f"0+100x{n}"),
        stints("asst_fast", None, f"0+100x{n}", status="in_progress"),
        stints("asst_fast", "30.0", f"0+0x{n}", status="in_progress"),
        # 6% slow: burn 1.2, only the 1x ticket.
        stints("asst_latency_6", None, f"0+100x{n}"), stints("asst_latency_6", "30.0", f"0+94x{n}"),
        stints("asst_latency_6", "+Inf", f"0+100x{n}"),
    ]
    alerts: list[Alert] = [("queue_latency", "asst_slow", w, 16) for w in ALL]
    alerts.append(("queue_latency", "asst_latency_6", "3d", 1.2))
    return group("queue latency: queued stints over 30s, either spelling of the bucket bound", "1m", inputs,
                 [("195m", alerts)])


def onset_1h() -> Json:
    """2h at 100 runs a minute, all completed, then all fail (burn 100). The 1h ratio passes 14.4% after
    8.64 minutes, so with `for: 2m` the page fires from minute 11 (a 2h window: minute 20, silent at 13)."""
    inputs = [finished("asst_onset", "completed", "0+100x120 12000x20"),
              finished("asst_onset", "failed", "0x120 100+100x19")]
    return group("long window 1h: how soon a sudden total failure pages", "1m", inputs, [
        ("128m", []),
        ("133m", [("success", "asst_onset", "1h", 13 / 60 * 100)]),
    ])


def burst_5m() -> Json:
    """6h clean, 20 minutes of failures, then clean. Paging during the burst; 7 minutes after it the 5m
    window is clean, so it stops (a 10m window would still hold 3 failing minutes: 30%)."""
    inputs = [finished("asst_burst", "completed", "0+100x360 36000x19 36000+100x60"),
              finished("asst_burst", "failed", "0x360 100+100x19 2000x60")]
    return group("short window 5m: a 20-minute burst stops paging 5 minutes after it ends", "1m", inputs, [
        ("383m", [("success", "asst_burst", "1h", 20 / 59 * 100)]),  # one sample less (see module docstring)
        ("387m", []),
    ])


def burst_30m() -> Json:
    """6h clean, 45 minutes of failures, then clean. The 6h page fires from minute 22 + 15; 35 minutes after
    the burst the 30m window is clean and it stops, while the 1d ticket (active since minute 12, `for: 1h`)
    fires."""
    inputs = [finished("asst_burst", "completed", "0+100x360 36000x44 36000+100x60"),
              finished("asst_burst", "failed", "0x360 100+100x44 4500x60")]
    return group("short window 30m: a 45-minute burst stops paging 30 minutes after it ends", "1m", inputs, [
        ("405m", [("success", "asst_burst", "1h", 75.0), ("success", "asst_burst", "6h", 45 / 360 * 100)]),
        ("440m", [("success", "asst_burst", "1d", 45 / 439 * 100)]),  # one sample less
    ])


H = 864  # six days of 10-minute samples: twice the longest window, so doubling a window changes the ratio
T0 = H * 10  # minutes


def onset_long() -> Json:
    """6 days clean, then all fail. 6h ratio > 6% from minute 30 (10-minute samples), page after `for: 15m`;
    1d > 3% and 3d > 1% from minute 50, tickets after `for: 1h` (110) and `for: 3h` (230). Doubled windows
    would need minute 50 and 90: the 6h page at 50, the 1d ticket at 120 and the 3d one at 240 would not
    have fired."""
    inputs = [finished("asst_onset", "completed", f"0+1000x{H} {H * 1000}x24"),
              finished("asst_onset", "failed", f"0x{H} 1000+1000x23")]
    return group("long windows 6h, 1d and 3d: how soon a sudden total failure pages or opens a ticket", "10m",
                 inputs, [
                     (f"{T0 + 40}m", []),
                     (f"{T0 + 50}m", [("success", "asst_onset", "6h", 50 / 360 * 100)]),
                     (f"{T0 + 120}m", [("success", "asst_onset", "6h", 120 / 360 * 100),
                                       ("success", "asst_onset", "1d", 120 / 1440 * 100)]),
                     (f"{T0 + 240}m", [("success", "asst_onset", "6h", 240 / 360 * 100),
                                       ("success", "asst_onset", "1d", 240 / 1440 * 100),
                                       ("success", "asst_onset", "3d", 240 / 4320 * 100)]),
                 ])


def burst_2h() -> Json:
    """2 hours of failures after 6 clean days. 130 minutes after the burst the 2h window is clean: the 1d
    ticket stops (a 4h window would keep it); the 3d ticket, active since minute 50, still fires."""
    inputs = [finished("asst_burst", "completed", f"0+1000x{H} {H * 1000}x11 {H * 1000}+1000x20"),
              finished("asst_burst", "failed", f"0x{H} 1000+1000x11 12000x20")]
    return group("short window 2h: a 2-hour burst stops the 1d ticket 2 hours after it ends", "10m", inputs, [
        (f"{T0 + 250}m", [("success", "asst_burst", "3d", 120 / 4310 * 100)]),  # one sample less
    ])


def burst_6h() -> Json:
    """4 hours of failures after 6 clean days: every ticket and page fires at its end; 6h10m later the 6h
    window is clean and the 3d ticket stops (a 12h window would keep it)."""
    inputs = [finished("asst_burst", "completed", f"0+1000x{H} {H * 1000}x23 {H * 1000}+1000x40"),
              finished("asst_burst", "failed", f"0x{H} 1000+1000x23 24000x40")]
    return group("short window 6h: a 4-hour burst stops the 3d ticket 6 hours after it ends", "10m", inputs, [
        (f"{T0 + 240}m", [("success", "asst_burst", "6h", 240 / 360 * 100),
                          ("success", "asst_burst", "1d", 240 / 1440 * 100),
                          ("success", "asst_burst", "3d", 240 / 4320 * 100)]),
        (f"{T0 + 610}m", []),
    ])


HEADER_SHORT = """\
# promtool unit tests for rules/assistants-exporter-slos.rules.yml, one-minute samples. Generated by
# rules/tests/generate_slo_tests.py, which explains every expected alert; edit that and rerun it.
#   promtool test rules rules/tests/assistants-exporter-slos.rules.test.yml
"""
HEADER_LONG = """\
# promtool unit tests for rules/assistants-exporter-slos.rules.yml, ten-minute samples and six days of
# history for the day-long windows. Generated by rules/tests/generate_slo_tests.py; edit that and rerun it.
#   promtool test rules rules/tests/assistants-exporter-slos-long.rules.test.yml
"""
RULE_FILES = ["../assistants-exporter-slos.rules.yml"]


def render() -> dict[Path, str]:
    short = {"rule_files": RULE_FILES, "evaluation_interval": "1m",
             "tests": [factors(), queue_latency(), onset_1h(), burst_5m(), burst_30m()]}
    long = {"rule_files": RULE_FILES, "evaluation_interval": "10m",
            "tests": [onset_long(), burst_2h(), burst_6h()]}
    return {SHORT: yamlout.dump(short, HEADER_SHORT), LONG: yamlout.dump(long, HEADER_LONG)}


if __name__ == "__main__":
    for path, text in render().items():
        path.write_text(text, encoding="utf-8")
        print(path)
