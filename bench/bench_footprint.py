"""Print the exporter's memory and CPU beside the Kubernetes resources in deploy/kubernetes/base.

    python bench/bench_footprint.py [--seconds 120] [--runs 100000]

Two measurements:
1. The real exporter process (`python -m exporter --demo`, which also runs the simulator in the same
   process, so the figures are an upper bound for the exporter alone) in the `steady` and `history`
   scenarios: RSS after start-up, peak RSS (VmHWM), and CPU in cores (mean over the run, and the busiest
   5-second window).
2. Memory per tracked run: the RSS growth of this process while a tracker takes N runs through the
   observe path, to size memory for fleets larger than the demo.
Prints figures and the manifest's requests/limits side by side; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.model import RunSnapshot  # noqa: E402
from exporter.tracker import Tracker  # noqa: E402

STATEFULSET = ROOT / "deploy" / "kubernetes" / "base" / "statefulset.yaml"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
WINDOW = 5  # samples (seconds) in the "busiest window" CPU figure


@dataclass(frozen=True)
class Footprint:
    rss_start_mib: float  # RSS 10 s after start
    rss_end_mib: float
    peak_mib: float  # VmHWM: the kernel's high-water mark, so short spikes between samples count
    cpu_mean: float  # cores
    cpu_peak: float  # cores, busiest WINDOW-second window


def _rss_and_hwm(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    after = stat[stat.rindex(")") + 2:].split()  # fields from the 3rd on; comm may hold spaces
    return (int(after[11]) + int(after[12])) / TICKS  # utime, stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure_exporter(scenario: str, seconds: int, speed: float) -> Footprint:
    with tempfile.TemporaryDirectory() as tmp, open(f"{tmp}/log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--demo", "--demo-scenario", scenario, "--demo-speed", str(speed),
             "--listen", f"127.0.0.1:{_free_port()}", "--state-file", f"{tmp}/state.db",
             "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
        try:
            cpu: list[float] = []
            rss_start = 0.0
            t0 = time.monotonic()
            for i in range(seconds + 1):
                # Sampling cadence of the benchmark itself, not synchronisation.
                time.sleep(max(0.0, t0 + i - time.monotonic()))
                if proc.poll() is not None:
                    tail = Path(f"{tmp}/log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"exporter exited with {proc.returncode} in scenario {scenario}:\n{tail}")
                cpu.append(_cpu_seconds(proc.pid))
                if i == 10:
                    rss_start = _rss_and_hwm(proc.pid)[0]
            rss_end, peak = _rss_and_hwm(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    windows = [(cpu[i + WINDOW] - cpu[i]) / WINDOW for i in range(len(cpu) - WINDOW)]
    return Footprint(rss_start, rss_end, peak, (cpu[-1] - cpu[0]) / seconds, max(windows))


def bytes_per_run(runs: int) -> float:
    """RSS growth per run while a tracker takes `runs` runs (100 a thread) through observe()."""
    gc.collect()
    before = _rss_and_hwm(os.getpid())[0]
    tracker = Tracker(["assistant_id"], 3600)
    t0 = 1_700_000_000
    statuses = ("queued", "in_progress", "requires_action", "completed", "failed", "expired")
    for t in range(max(1, runs // 100)):
        tid = f"thread_{t:07d}"
        batch = [RunSnapshot(f"run_{t:07d}_{i:03d}", tid, statuses[i % len(statuses)], t0 + 1,
                             assistant_id=f"asst_{i % 10}", started_at=t0 + 2, completed_at=t0 + 9,
                             failed_at=t0 + 9, expires_at=t0 + 601) for i in range(100)]
        tracker.observe(tid, batch, t0 + 10, complete=True, ok=True)
    gc.collect()
    after = _rss_and_hwm(os.getpid())[0]
    del tracker
    return (after - before) * 1024 * 1024 / runs


def manifest_resources() -> dict[str, dict[str, str]]:
    doc = yaml.safe_load(STATEFULSET.read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    resources: dict[str, dict[str, str]] = container["resources"]
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--runs", type=int, default=100_000)
    args = parser.parse_args()
    res = manifest_resources()
    print(f"manifest: requests {res['requests']}, limits {res['limits']}")
    print(f"{'scenario':<22} {'RSS@10s MiB':>11} {'RSS end':>8} {'peak':>7} {'CPU mean':>9} {'CPU 5s max':>10}")
    for scenario, speed in (("steady", 5.0), ("steady", 50.0), ("history", 5.0)):
        f = measure_exporter(scenario, args.seconds, speed)
        print(f"{scenario + ' x' + format(speed, 'g'):<22} {f.rss_start_mib:>11.1f} {f.rss_end_mib:>8.1f} "
              f"{f.peak_mib:>7.1f} {f.cpu_mean:>9.3f} {f.cpu_peak:>10.3f}")
    per_run = bytes_per_run(args.runs)
    print(f"tracker memory per run at {args.runs:,} runs: {per_run:,.0f} B "
          f"(so 100k runs ≈ {per_run * 100_000 / 2**20:.0f} MiB, 1M runs ≈ {per_run * 1_000_000 / 2**20:.0f} MiB)")
    print(f"goals: steady RSS ≤ memory request ({res['requests']['memory']}), peak ≤ half the memory limit "
          f"({res['limits']['memory']}), mean CPU ≤ CPU request ({res['requests']['cpu']})")


if __name__ == "__main__":
    main()
