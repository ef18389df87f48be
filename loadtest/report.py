"""Tables and plots of the newest load-test run of each profile, for docs/performance.md.

    python loadtest/report.py                              # print the tables
    python loadtest/report.py --write docs/performance.md  # and replace the load-test section

    python loadtest/report.py --write docs/performance.md --only mix   # the realistic-mix section only

Reads ``summary.json`` and ``memory.csv`` of the newest run of each profile under
reports/locust/ (``loadtest/run.py`` writes them) and draws the longevity run's memory, the
stress run's throughput and the curve run's latency and shed rate into docs/img/. The
realistic-mix section holds the newest high run (any ``--scale``) against the targets and
the curve.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from cropseg_stack.sections import replace_section
from run import MAX_SHED_RATIO, P95_LIMITS_MS, PROFILES, REPO, curve_steps, stress_steps

START, END = "<!-- loadtest:start -->", "<!-- loadtest:end -->"
MIX_START, MIX_END = "<!-- mix:start -->", "<!-- mix:end -->"
SEED = {  # the seed's results (section 8 of its report): failures, and failure rate as printed
    "baseline": "1 of 981 (0%)",
    "moderate": "11 of 2,873 (0%)",
    "high": "14%",
    "longevity": "6%",
}
NAMES = ["page", "info", "gallery", "image", "upload", "segment", "evaluation"]


def newest(reports: Path, profile: str) -> Path | None:
    runs = sorted(path.parent for path in (reports / profile).glob("*/summary.json"))
    return runs[-1] if runs else None


def minutes(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 7200 else f"{seconds / 60:g} min"


def profiles_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| profile | users | spawn/s | seed: duration | seed: failures | ours: duration | requests "
        "| failures | req/s | commit |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for name, seed in SEED.items():
        profile = PROFILES[name]
        run = runs.get(name)
        if run is None:
            ours = ["not run", "", "", "", ""]
        else:
            total = next(row for row in run["requests"] if row["Name"] == "Aggregated")
            count, failures = int(total["Request Count"]), int(total["Failure Count"])
            ours = [
                minutes(run["duration_s"] * run["scale"]),
                f"{count:,}",
                f"{failures} ({failures / count:.1%})",
                f"{float(total['Requests/s']):.1f}",
                run.get("commit") or "-",
            ]
        cells = [name, str(profile.users), f"{profile.spawn_rate:g}", minutes(profile.duration_s), seed]
        lines.append("| " + " | ".join([*cells, *ours]) + " |")
    return lines


def latency_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    shown = [name for name in SEED if name in runs]
    lines = [
        "| request | " + " | ".join(f"{name} p50 / p95" for name in shown) + " | p95 limit |",
        "|---|" + "---:|" * (len(shown) + 1),
    ]
    for request in NAMES:
        cells = []
        for name in shown:
            row = next((r for r in runs[name]["requests"] if r["Name"] == request), None)
            cells.append(f"{row['Median Response Time']} / {row['95%']}" if row else "-")
        lines.append(f"| {request} | " + " | ".join(cells) + f" | {P95_LIMITS_MS[request]} |")
    return lines


def memory_table(run: dict[str, Any]) -> list[str]:
    lines = [
        "| service | before the load MiB | at the end MiB | largest MiB | trend, second half MiB/h |",
        "|---|---:|---:|---:|---:|",
    ]
    for service, memory in run["memory"].items():
        lines.append(
            f"| {service} | {memory['start_mib']:.0f} | {memory['end_mib']:.0f} | {memory['max_mib']:.0f} "
            f"| {memory['trend_mib_per_hour']:+.1f} |"
        )
    return lines


def capacity(run: dict[str, Any]) -> dict[str, Any]:
    """The best step before the first failing one, and where shedding began."""
    steps = run["steps"]
    first_failing = next((i for i, step in enumerate(steps) if step["failures"]), len(steps))
    sustained = [step for step in steps[:first_failing] if step["segmentations_per_s"] is not None]
    best = max(sustained, key=lambda step: step["segmentations_per_s"])
    return {
        "best": best,
        "shed_at_users": steps[first_failing]["users"] if first_failing < len(steps) else None,
        **run["physical_limit"],
    }


def stress_lines(run: dict[str, Any]) -> list[str]:
    found = capacity(run)
    best, limit, bare = found["best"], found["limit_tiles_per_s"], found["bare_onnxruntime_tiles_per_s"]
    rate = best["segmentations_per_s"]
    shed = (
        f"inference began shedding (503 + Retry-After) at **{found['shed_at_users']} users**"
        if found["shed_at_users"]
        else "no step shed load (the run stopped at its user or time cap)"
    )
    lines = [
        f"Stress (`.venv/bin/python loadtest/run.py stress`, {run['started']}, {run.get('commit')}): "
        "users that segment a random sample tile back to back, 10 more every 30 s, until a "
        "segmentation answers 503; the first 10 s of each step are left out of its rate. Inference "
        "runs with the time bound off (`INFERENCE_MAX_QUEUE_WAIT_S=0`), so it sheds only when "
        "`INFERENCE_MAX_QUEUE_TILES` tiles wait: the search reads the throughput plateau, not the "
        "admission policy.",
        "",
        "| users | segmentations/s | failures | p50 ms | p95 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step in run["steps"]:
        per_s = "-" if step["segmentations_per_s"] is None else f"{step['segmentations_per_s']:.2f}"
        latency = f"{step['p50_ms']:.0f} | {step['p95_ms']:.0f}"
        lines.append(f"| {step['users']} | {per_s} | {step['failures']} | {latency} |")
    lines += [
        "",
        f"**Capacity: {rate:.1f} segmentations/s sustained** (at {best['users']} users, "
        f"no failures); {shed}. Physical limit, measured right after on the same machine: "
        f"{found['flops_per_tile'] / 1e9:.2f} GFLOP per tile at a float32 peak of "
        f"{found['cpu_peak_flops_per_s'] / 1e9:.0f} GFLOP/s = {limit:.1f} tiles/s, so the whole stack "
        f"(HTTP, storage reads and writes, PNG decode and encode, Locust itself on the same 2 cores) "
        f"reaches **{rate / limit:.0%} of the physical limit** and "
        f"{rate / bare:.0%} of bare ONNX Runtime's one-tile-at-a-time rate "
        f"({bare:.1f} tiles/s).",
    ]
    return lines


def plot(runs: dict[str, dict[str, Any]], reports: Path, images: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images.mkdir(parents=True, exist_ok=True)
    shown = []
    longevity = newest(reports, "longevity")
    if longevity is not None and (longevity / "memory.csv").is_file():
        series: dict[str, tuple[list[float], list[float]]] = {}
        with (longevity / "memory.csv").open() as handle:
            for row in csv.DictReader(handle):
                xs, ys = series.setdefault(row["service"], ([], []))
                xs.append(float(row["elapsed_s"]) / 60)
                ys.append(float(row["rss_mib"]))
        figure, axes = plt.subplots(figsize=(8, 3.5))
        for service, (xs, ys) in series.items():
            axes.plot(xs, ys, label=service)
        axes.set(xlabel="minutes into the longevity run", ylabel="resident memory (MiB)", ylim=(0, None))
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(images / "longevity-memory.png", dpi=100)
        plt.close(figure)
        shown.append("![Resident memory of each service during the longevity run](img/longevity-memory.png)")
    if "stress" in runs:
        steps = [step for step in runs["stress"]["steps"] if step["segmentations_per_s"] is not None]
        figure, left = plt.subplots(figsize=(8, 3.5))
        users = [step["users"] for step in steps]
        left.plot(users, [step["segmentations_per_s"] for step in steps], "o-", label="segmentations/s")
        limit = runs["stress"]["physical_limit"]["limit_tiles_per_s"]
        left.axhline(limit, color="grey", linestyle="--", label="physical limit")
        left.set(xlabel="users", ylabel="segmentations/s", ylim=(0, limit * 1.1))
        right = left.twinx()
        right.plot(users, [step["p95_ms"] / 1000 for step in steps], "s-", color="tab:red", label="p95 s")
        right.set(ylabel="p95 latency (s)", ylim=(0, None))
        left.legend(loc="center right")
        right.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(images / "stress-capacity.png", dpi=100)
        plt.close(figure)
        shown.append("![Throughput and p95 latency against users in the stress run](img/stress-capacity.png)")
    return shown


def section(reports: Path, images: Path) -> str:
    runs = {}
    for name in [*SEED, "stress"]:
        path = newest(reports, name)
        if path is not None:
            runs[name] = json.loads((path / "summary.json").read_text())
            if name == "stress":  # from the raw history, so the table follows the current definition
                runs[name]["steps"] = stress_steps(path / "locust_stats_history.csv")
    scaled = ", ".join(
        f"{name} with `--scale {run['scale']:g}`" for name, run in runs.items() if run["scale"] != 1
    )
    lines = [
        "Commands: `.venv/bin/python loadtest/run.py <profile>` for each profile"
        + (f" ({scaled})" if scaled else "")
        + ", then `.venv/bin/python loadtest/report.py --write docs/performance.md` for these tables "
        "and plots; the commit column says which code ran. 2 CPU cores shared by the three "
        "services and Locust.",
        "",
        *profiles_table(runs),
        "",
        "Latency per request name, milliseconds (p95 limits are the runner's thresholds):",
        "",
        *latency_table(runs),
    ]
    if "longevity" in runs:
        run = runs["longevity"]
        lines += [
            "",
            f"Memory in the longevity run ({minutes(PROFILES['longevity'].duration_s * run['scale'])} of the "
            f"seed's 2 h; `process_resident_memory_bytes` of each service every 15 s, `memory.csv`):",
            "",
            *memory_table(run),
        ]
    if "stress" in runs:
        lines += ["", *stress_lines(runs["stress"])]
    figures = plot(runs, reports, images)
    if figures:
        lines += ["", *figures]
    return "\n".join(lines)


def mix_section(reports: Path, images: Path) -> str:
    """The newest high run against the targets, and the curve: users -> p50/p95 -> shed rate."""
    lines = []
    high = newest(reports, "high")
    if high is not None:
        run = json.loads((high / "summary.json").read_text())
        total = next(row for row in run["requests"] if row["Name"] == "Aggregated")
        count = int(total["Request Count"])
        lines += [
            f"The mix at 50 users (`.venv/bin/python loadtest/run.py high --scale {run['scale']:g}`: "
            f"{minutes(run['duration_s'] * run['scale'])}, {run['started']}, {run.get('commit')}): "
            f"{count:,} requests, **{run['shed']} shed ({run['shed'] / count:.2%}**, target at most "
            f"{MAX_SHED_RATIO:.0%}), failures other than shedding: {sum(run['other_failures'].values())}; "
            f"exit code {run['exit_code']} (1 when a target is broken).",
            "",
            "| request | count | p50 ms | p95 ms | p95 target ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for request in NAMES:
            row = next((r for r in run["requests"] if r["Name"] == request), None)
            if row is not None:
                lines.append(f"| {request} | {int(row['Request Count']):,} | {row['Median Response Time']} "
                             f"| {row['95%']} | {P95_LIMITS_MS[request]} |")  # fmt: skip
    curve = newest(reports, "curve")
    if curve is not None:
        run = json.loads((curve / "summary.json").read_text())
        steps = curve_steps(curve / "locust_stats_history.csv")
        lines += [
            "",
            f"The curve (`.venv/bin/python loadtest/run.py curve`, {run['started']}, {run.get('commit')}): "
            "the same mix at 10 to 60 users, a minute each; per step (its first 10 s left out) requests "
            "per second and the share shed; segmentation's p50/p95 over the step's last 10 s.",
            "",
            "| users | requests/s | shed | segment p50 ms | segment p95 ms |",
            "|---:|---:|---:|---:|---:|",
            *(f"| {step['users']} | {step['requests_per_s']:.1f} | {step['shed_ratio']:.2%} "
              f"| {step['segment_p50_ms']:.0f} | {step['segment_p95_ms']:.0f} |" for step in steps),
        ]  # fmt: skip
        lines += ["", curve_plot(steps, images)]
    return "\n".join(lines)


def curve_plot(steps: list[dict[str, float]], images: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images.mkdir(parents=True, exist_ok=True)
    users = [step["users"] for step in steps]
    figure, left = plt.subplots(figsize=(8, 3.5))
    left.plot(users, [step["segment_p50_ms"] / 1000 for step in steps], "o-", label="segment p50")
    left.plot(users, [step["segment_p95_ms"] / 1000 for step in steps], "s-", label="segment p95")
    left.axhline(P95_LIMITS_MS["segment"] / 1000, color="grey", linestyle="--", label="p95 target")
    left.set(xlabel="users", ylabel="latency (s)", ylim=(0, None))
    right = left.twinx()
    right.bar(users, [100 * step["shed_ratio"] for step in steps], width=3, alpha=0.3, color="tab:red",
              label="shed %")  # fmt: skip
    right.set(ylabel="requests shed (%)", ylim=(0, max(5.0, *(100 * s["shed_ratio"] for s in steps)) * 1.2))
    left.legend(loc="upper left")
    right.legend(loc="upper center")
    figure.tight_layout()
    figure.savefig(images / "mix-curve.png", dpi=100)
    plt.close(figure)
    return "![Segmentation latency and share shed against users, the realistic mix](img/mix-curve.png)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=Path, default=REPO / "reports" / "locust")
    parser.add_argument("--write", type=Path, help="replace the load-test sections of this markdown file")
    parser.add_argument("--only", choices=["profiles", "mix"], help="one section: the profiles, or the mix")
    args = parser.parse_args()
    images = (args.write.parent if args.write else REPO / "reports") / "img"
    for name, (start, end, make) in {
        "profiles": (START, END, section),
        "mix": (MIX_START, MIX_END, mix_section),
    }.items():
        if args.only in (None, name):
            text = make(args.reports, images)
            print(text)
            if args.write:
                replace_section(args.write, start, end, text)


if __name__ == "__main__":
    main()
