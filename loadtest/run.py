"""Run a load-test profile headless against the local stack and keep its reports.

    python loadtest/run.py high                  # 50 users, 5/s, 30 min (the seed's "high")
    python loadtest/run.py baseline --scale 0.1  # a tenth of the duration
    python loadtest/run.py smoke                 # the CI smoke: high's users for 60 s
    python loadtest/run.py stress                # add users until inference sheds load

Starts the stack on free ports when --host is not given (a separate data folder under
var/loadtest/), writes CSV and HTML reports to reports/locust/<profile>/<timestamp>/, prints
a summary table and exits with Locust's code (1 when a threshold is broken).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


@dataclass(frozen=True)
class Profile:
    users: int
    spawn_rate: float
    duration_s: float
    description: str


# The seed's four profiles (section 8 of its report), the CI smoke and the capacity search.
PROFILES = {
    "baseline": Profile(5, 1, 600, "normal daily use"),
    "moderate": Profile(20, 2, 1800, "a busy season"),
    "high": Profile(50, 5, 1800, "peak: the seed failed 14 % of requests here"),
    "longevity": Profile(20, 2, 7200, "two hours of moderate load: leaks, growth, stability"),
    "smoke": Profile(50, 5, 60, "CI: the high profile's users and spawn rate for 60 s"),
    "stress": Profile(0, 0, 1800, "10 more users every 30 s until inference sheds load"),
}
# p95 limits per request name (ms), for every profile but stress.
P95_LIMITS_MS = {
    "info": 500,
    "gallery": 1000,
    "image": 500,
    "upload": 2000,
    "segment": 5000,
    "evaluation": 1000,
}


def summary(csv_prefix: Path) -> str:
    with (csv_prefix.parent / f"{csv_prefix.name}_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
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

        config = StackConfig(
            data=REPO / "var" / "loadtest" / "data", inference_port=free_port(), storage_port=free_port(),
            drift_port=free_port(), prometheus=False, drift_every_s=None,
        )  # fmt: skip
        log = (out / "stack.log").open("w")
        stack = Stack(config, output=lambda name, line: print(f"{name:<13}| {line}", file=log, flush=True))
        stack.start()
        host = stack.urls()["storage"]
    env = {**os.environ, "CROPSEG_MAX_P95_MS": json.dumps(P95_LIMITS_MS)}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
               "--stop-timeout", "30"]  # fmt: skip
    if args.profile == "stress":
        env |= {"CROPSEG_SHAPE": "stress", "CROPSEG_STRESS_MAX_S": str(profile.duration_s * args.scale)}
        command += ["-t", f"{int(profile.duration_s * args.scale)}s"]
    else:
        command += [
            "-u",
            str(profile.users),
            "-r",
            str(profile.spawn_rate),
            "-t",
            f"{int(profile.duration_s * args.scale)}s",
        ]
    print(f"profile {args.profile}: {profile.description}; reports in {out}", flush=True)
    try:
        result = subprocess.run(command, env=env, cwd=REPO, check=False)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        if stack is not None:
            stack.stop()
    print(summary(out / "locust"))
    print(f"locust exit code {result.returncode}; HTML report {out / 'report.html'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
