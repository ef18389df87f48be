"""Run a load-test profile headless against the local stack and keep its reports.

    python loadtest/run.py high                  # 50 users, 5/s, 30 min (the seed's "high")
    python loadtest/run.py baseline --scale 0.1  # a tenth of the duration
    python loadtest/run.py smoke                 # the CI smoke: high's users for 60 s
    python loadtest/run.py stress                # add users until inference sheds load
    python loadtest/run.py curve                 # the mix at 10-60 users: latency and shed rate

Starts the stack on free ports when --host is not given (a separate data folder under
var/loadtest/), writes CSV and HTML reports to reports/locust/<profile>/<timestamp>/, prints
a summary table and exits with Locust's code (1 when a threshold is broken).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


@dataclass(frozen=True)
class Profile:
    users: int
    spawn_rate: float
    duration_s: float
    description: str
    targets: bool = True
    """Exit 1 when a p95 target or the shed bound is broken (not in CI: timings there are noise)."""


# The seed's four profiles (section 8 of its report), the CI smoke, the capacity search and the
# latency curve. Every profile but stress runs the realistic mix: the seed's five tasks with its
# weights, on images of its dataset's size (360x480).
PROFILES = {
    "baseline": Profile(5, 1, 600, "normal daily use"),
    "moderate": Profile(20, 2, 1800, "a busy season"),
    "high": Profile(50, 5, 1800, "peak: the seed failed 14 % of requests here"),
    "longevity": Profile(20, 2, 7200, "two hours of moderate load: leaks, growth, stability"),
    "smoke": Profile(50, 5, 60, "CI: the high profile's users and spawn rate for 60 s", targets=False),
    "stress": Profile(0, 0, 1800, "10 more users every 30 s until inference sheds load", targets=False),
    "curve": Profile(0, 0, 360, "the mix at 10, 20, ... 60 users, 60 s each: latency, shed", targets=False),
}
# Targets: p95 per request name (ms), and the share of requests shed with 503 + Retry-After.
P95_LIMITS_MS = {
    "page": 300,
    "info": 300,
    "gallery": 300,
    "image": 300,
    "upload": 2000,
    "segment": 2500,
    "evaluation": 1000,
}
MAX_SHED_RATIO = 0.01


class MemorySampler:
    """Resident memory of each service every ``interval_s``, read from its /metrics, into a CSV."""

    def __init__(self, urls: dict[str, str], path: Path, interval_s: float = 15.0) -> None:
        self.urls, self.path, self.interval_s = urls, path, interval_s
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        with self.path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["elapsed_s", "service", "rss_mib"])
            while True:
                elapsed = time.monotonic() - start
                for name, url in self.urls.items():
                    rss = resident_mib(url)
                    if rss is not None:
                        self.samples[name].append((elapsed, rss))
                        writer.writerow([f"{elapsed:.0f}", name, f"{rss:.1f}"])
                handle.flush()
                if self.stopping.wait(self.interval_s):
                    return

    def summary(self) -> dict[str, dict[str, float]]:
        """First, last and largest sample per service, and the trend over the run's second half."""
        result = {}
        for name, samples in self.samples.items():
            if len(samples) < 2:
                continue
            values = [rss for _, rss in samples]
            result[name] = {
                "start_mib": values[0],
                "end_mib": values[-1],
                "max_mib": max(values),
                "trend_mib_per_hour": trend(samples[len(samples) // 2 :]) * 3600,
            }
        return result


def resident_mib(base_url: str) -> float | None:
    """``process_resident_memory_bytes`` of a service in MiB, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


def trend(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points: growth per second."""
    if len(samples) < 2:
        return 0.0
    mean_x = sum(x for x, _ in samples) / len(samples)
    mean_y = sum(y for _, y in samples) / len(samples)
    spread = sum((x - mean_x) ** 2 for x, _ in samples)
    return sum((x - mean_x) * (y - mean_y) for x, y in samples) / spread if spread else 0.0


def git_commit() -> str | None:
    """The checked-out commit (with ``+`` when the tree has changes), None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if changed else "")


def read_stats(csv_prefix: Path) -> list[dict[str, str]]:
    with (csv_prefix.parent / f"{csv_prefix.name}_stats.csv").open() as handle:
        return list(csv.DictReader(handle))


def stress_steps(history: Path, settle_s: float = 10.0) -> list[dict[str, float | None]]:
    """Successful segmentations per second at each user count, leaving out each step's first
    ``settle_s``; failures over the whole step; latency percentiles over its last 10 s.

    Locust's full history has one row per request name and second: running totals, and
    percentiles over a 10 s sliding window. A step cut short (the run stops at the first
    503) has no rate, only its failures.
    """
    with history.open() as handle:
        steps = _steps(list(csv.DictReader(handle)), "Aggregated")  # segment and "segment shed"
    result: list[dict[str, float | None]] = []
    failed_before = 0
    for users, group in steps.items():
        failed = int(group[-1]["Total Failure Count"])
        step: dict[str, float | None] = {
            "users": users,
            "segmentations_per_s": None,
            "failures": failed - failed_before,
            "p50_ms": float(group[-1]["50%"]),
            "p95_ms": float(group[-1]["95%"]),
        }
        failed_before = failed
        start = float(group[0]["Timestamp"]) + settle_s
        kept = [row for row in group if float(row["Timestamp"]) >= start]
        if len(kept) >= 2:
            first, last = kept[0], kept[-1]
            seconds = float(last["Timestamp"]) - float(first["Timestamp"])
            done = int(last["Total Request Count"]) - int(first["Total Request Count"])
            done -= int(last["Total Failure Count"]) - int(first["Total Failure Count"])
            step["segmentations_per_s"] = done / seconds
        if step["segmentations_per_s"] is not None or step["failures"]:  # not a moment mid-spawn
            result.append(step)
    return result


def failure_counts(csv_prefix: Path) -> tuple[int, dict[str, int]]:
    """Requests shed (503 + Retry-After, see the locustfile), and every other error with its count."""
    shed, others = 0, {}
    with (csv_prefix.parent / f"{csv_prefix.name}_failures.csv").open() as handle:
        for row in csv.DictReader(handle):
            if "shed: 503" in row["Error"]:
                shed += int(row["Occurrences"])
            else:
                others[f"{row['Name']}: {row['Error']}"] = int(row["Occurrences"])
    return shed, others


def curve_steps(history: Path, settle_s: float = 10.0) -> list[dict[str, float]]:
    """Per user count of a curve run: requests per second, the share shed (every failure of the
    step: the run's other failures are reported apart), and segment's p50/p95 at the step's end
    (Locust's 10 s window), leaving out each step's first ``settle_s``."""
    with history.open() as handle:
        rows = list(csv.DictReader(handle))
    result = []
    segments = _steps(rows, "segment")
    for users, group in _steps(rows, "Aggregated").items():
        start = float(group[0]["Timestamp"]) + settle_s
        kept = [row for row in group if float(row["Timestamp"]) >= start]
        if len(kept) < 2:
            continue
        first, last = kept[0], kept[-1]
        requests = int(last["Total Request Count"]) - int(first["Total Request Count"])
        failures = int(last["Total Failure Count"]) - int(first["Total Failure Count"])
        segment = segments.get(users, [])
        result.append({
            "users": users,
            "requests_per_s": requests / (float(last["Timestamp"]) - float(first["Timestamp"])),
            "shed_ratio": failures / requests if requests else 0.0,
            "segment_p50_ms": float(segment[-1]["50%"]) if segment else float("nan"),
            "segment_p95_ms": float(segment[-1]["95%"]) if segment else float("nan"),
        })  # fmt: skip
    return result


def _steps(rows: list[dict[str, str]], name: str) -> dict[int, list[dict[str, str]]]:
    """History rows of ``name`` grouped by user count, up to where users are being stopped (the
    ramp is over); rows before its first answer (no percentiles yet) left out."""
    steps: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        if row["Name"] != name or row["50%"] == "N/A":
            continue
        users = int(row["User Count"])
        if steps and users < max(steps):
            break
        steps.setdefault(users, []).append(row)
    return steps


def physical_limit() -> dict[str, float]:
    """The model's FLOPs per tile, this CPU's measured float32 peak, and bare ONNX Runtime's rate,
    measured by the inference benchmark (``benchmarks/inference.py --physical-limit``; needs torch)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "inference.py"), "--physical-limit"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    limit: dict[str, float] = json.loads(done.stdout.splitlines()[-1])  # the last line: the JSON
    return limit


def steps_table(steps: list[dict[str, float | None]]) -> str:
    lines = [f"{'users':>6}{'segment/s':>11}{'failures':>10}{'p50 ms':>9}{'p95 ms':>9}"]
    for step in steps:
        rate = step["segmentations_per_s"]
        lines.append(
            f"{step['users']:>6}{'-' if rate is None else f'{rate:.2f}':>11}{step['failures']:>10}"
            f"{step['p50_ms']:>9.0f}{step['p95_ms']:>9.0f}"
        )
    return "\n".join(lines)


def curve_table(steps: list[dict[str, float]]) -> str:
    lines = [f"{'users':>6}{'req/s':>8}{'shed %':>8}{'segment p50':>13}{'p95 ms':>8}"]
    for step in steps:
        lines.append(f"{step['users']:>6}{step['requests_per_s']:>8.1f}{100 * step['shed_ratio']:>8.2f}"
                     f"{step['segment_p50_ms']:>13.0f}{step['segment_p95_ms']:>8.0f}")  # fmt: skip
    return "\n".join(lines)


def summary(csv_prefix: Path) -> str:
    rows = read_stats(csv_prefix)
    lines = [
        f"{'request':<12}{'count':>8}{'failures':>10}{'median ms':>11}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>8}"
    ]
    for row in rows:
        cells = (row["Name"], row["Request Count"], row["Failure Count"], row["Median Response Time"],
                 row["95%"], row["99%"], f"{float(row['Requests/s']):.2f}")  # fmt: skip
        lines.append("{:<12}{:>8}{:>10}{:>11}{:>9}{:>9}{:>8}".format(*cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the profile's duration (e.g. 0.1)")
    parser.add_argument("--host", help="storage URL of a running stack (default: start one on free ports)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "locust", help="reports folder")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    out = args.out / args.profile / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    stack = None
    host = args.host
    if host is None:
        from cropseg_stack.launcher import Stack, StackConfig

        from cropseg_core.processes import free_port

        data = REPO / "var" / "loadtest" / "data"
        shutil.rmtree(data, ignore_errors=True)  # every run starts from the seeded samples alone
        # The stress search measures capacity: with the time bound on, inference would shed
        # as soon as ~1.5 s of work queued, before the throughput plateau could be read.
        bound = {"INFERENCE_MAX_QUEUE_WAIT_S": "0"} if args.profile == "stress" else {}
        config = StackConfig(
            data=data, inference_port=free_port(), storage_port=free_port(),
            drift_port=free_port(), prometheus=False, drift_every_s=None, environment=bound,
        )  # fmt: skip
        log = (out / "stack.log").open("w")
        stack = Stack(config, output=lambda name, line: print(f"{name:<13}| {line}", file=log, flush=True))
        stack.start()
        host = stack.urls()["storage"]
    services = dict(stack.urls()) if stack else {"storage": host}
    env = {**os.environ, "CROPSEG_MAX_FAILURE_RATIO": "0"}  # failures other than shed load: none
    if profile.targets:
        env |= {
            "CROPSEG_MAX_P95_MS": json.dumps(P95_LIMITS_MS),
            "CROPSEG_MAX_SHED_RATIO": str(MAX_SHED_RATIO),
        }
    else:
        env |= {"CROPSEG_MAX_P95_MS": "{}", "CROPSEG_MAX_SHED_RATIO": "1"}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
               "--stop-timeout", "30"]  # fmt: skip
    run_time = f"{int(profile.duration_s * args.scale)}s"
    if args.profile == "stress":  # ends at the first 503 by design; other failures still count
        env |= {"CROPSEG_SHAPE": "stress", "CROPSEG_STRESS_MAX_S": str(profile.duration_s * args.scale)}
        command += ["--csv-full-history", "-t", run_time, "Segmenter"]
    elif args.profile == "curve":
        env |= {"CROPSEG_SHAPE": "curve", "CROPSEG_CURVE_STEP_S": str(60 * args.scale)}
        command += ["--csv-full-history", "-t", run_time, "Agronomist"]
    else:
        command += ["-u", str(profile.users), "-r", str(profile.spawn_rate), "-t", run_time, "Agronomist"]
    print(f"profile {args.profile}: {profile.description}; reports in {out}", flush=True)
    sampler = MemorySampler(services, out / "memory.csv")
    started = time.time()
    try:
        with sampler:
            result = subprocess.run(command, env=env, cwd=REPO, check=False)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        if stack is not None:
            stack.stop()
    exit_code = result.returncode
    shed, other_failures = failure_counts(out / "locust")
    record = {
        "profile": args.profile,
        **asdict(profile),
        "run_s": round(time.time() - started),
        "scale": args.scale,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "commit": git_commit(),
        "exit_code": exit_code,
        "requests": read_stats(out / "locust"),
        "shed": shed,
        "other_failures": other_failures,
        "memory": sampler.summary(),
    }
    if args.profile == "stress":
        record["steps"] = stress_steps(out / "locust_stats_history.csv")
        record["physical_limit"] = physical_limit()  # right after, on the same machine
        print(steps_table(record["steps"]))
    if args.profile == "curve":
        record["curve"] = curve_steps(out / "locust_stats_history.csv")
        print(curve_table(record["curve"]))
    (out / "summary.json").write_text(json.dumps(record, indent=2))
    print(summary(out / "locust"))
    print(f"exit code {exit_code}; HTML report {out / 'report.html'}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
