"""The service images as built by `make images`: size against budget, what the size is made of,
start to ready of each container as the chart runs it, and the compose stack to healthy.

    .venv/bin/python benchmarks/containers.py --write docs/containers.md --readme README.md
                                                                 (make bench-images)

``--cold`` also rebuilds each image without the build cache and times it (minutes). Containers
run as the chart runs them: uid 10001, read-only root, /tmp a tmpfs, all capabilities dropped.
Start to ready is from `docker run` to the first 200 of /readyz, polled every 50 ms; storage's
/readyz needs inference, which runs beside it. Ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from cropseg_stack.sections import replace_section
from tqdm import tqdm

from cropseg_core.processes import free_port, is_ready

REPO = Path(__file__).resolve().parents[1]
CHART = (REPO / "charts/cropseg/Chart.yaml").read_text()
TAG = re.findall(r'^appVersion: "?([^"\n]+?)"?$', CHART, re.MULTILINE)[0]
BUDGET_MB = {"inference": 280, "storage": 280, "drift-monitor": 850, "batch": 480}
FOLDERS = {"inference": "inference", "storage": "storage", "drift-monitor": "drift_monitor", "batch": "batch"}
START, END = "<!-- containers:start -->", "<!-- containers:end -->"
README_START, README_END = "<!-- image-table:start -->", "<!-- image-table:end -->"
HARDENED = ["--read-only", "--user", "10001:10001", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]  # fmt: skip


def docker(*arguments: str, timeout: float = 900) -> str:
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"docker {' '.join(arguments)}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def image(service: str) -> str:
    return f"cropseg/{service}:{TAG}"


def sizes() -> dict[str, dict[str, float]]:
    """Image size, its base, and the virtualenv inside, in MB."""
    found = {}
    base = json.loads(docker("image", "inspect", "python:3.11-slim-bookworm"))[0]["Size"] / 1e6
    for service in BUDGET_MB:
        size = json.loads(docker("image", "inspect", image(service)))[0]["Size"] / 1e6
        venv = docker("run", "--rm", "--entrypoint", "du", image(service), "-sb", "/opt/venv").split()[0]
        found[service] = {"size": size, "base": base, "venv": int(venv) / 1e6}
    return found


def cold_builds() -> dict[str, float]:
    """Seconds per image built without the cache (the base image already present)."""
    seconds = {}
    for service in tqdm(BUDGET_MB, desc="cold builds", unit="image"):
        start = time.perf_counter()
        docker("build", "--no-cache", "--quiet", "-f", "services/Dockerfile", "--build-arg",
               f"SERVICE={FOLDERS[service]}", "-t", image(service), str(REPO), timeout=1800)  # fmt: skip
        seconds[service] = time.perf_counter() - start
    return seconds


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(url, timeout_s=1):
            return
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready within {timeout_s:.0f} s")


def start_to_ready(rounds: int) -> dict[str, list[float]]:
    network = f"cropseg-bench-{int(time.time())}"
    docker("network", "create", network)
    times: dict[str, list[float]] = {"inference": [], "storage": []}
    try:
        for _ in tqdm(range(rounds), desc="start to ready", unit="round"):
            started: list[str] = []
            try:
                port = free_port()
                begin = time.perf_counter()
                arguments = [
                    "--network",
                    network,
                    "--name",
                    f"{network}-inference",
                    "-p",
                    f"127.0.0.1:{port}:8001",
                ]
                started.append(docker("run", "-d", "--rm", *HARDENED, *arguments, image("inference"),
                                      "--host", "0.0.0.0", "--port", "8001").strip())  # fmt: skip
                wait_ready(f"http://127.0.0.1:{port}/readyz")
                times["inference"].append(time.perf_counter() - begin)
                port = free_port()
                begin = time.perf_counter()
                started.append(docker("run", "-d", "--rm", *HARDENED, "--network", network, "--tmpfs",
                                      "/data:uid=10001,gid=10001", "-e",
                                      f"STORAGE_INFERENCE_URL=http://{network}-inference:8001",
                                      "-p", f"127.0.0.1:{port}:8002", image("storage"),
                                      "--host", "0.0.0.0", "--port", "8002",
                                      "--data", "/data").strip())  # fmt: skip
                wait_ready(f"http://127.0.0.1:{port}/readyz")
                times["storage"].append(time.perf_counter() - begin)
            finally:
                for container in reversed(started):
                    docker("rm", "-f", container)
    finally:
        docker("network", "rm", network)
    return times


def compose_to_healthy(rounds: int) -> list[float]:
    """`docker compose up -d --wait` on an empty volume, to every service healthy."""
    seconds = []
    project = ["compose", "-p", "cropseg-bench", "-f", str(REPO / "docker-compose.yml")]
    for _ in tqdm(range(rounds), desc="compose up", unit="round"):
        docker(*project, "down", "-v", "--remove-orphans")
        start = time.perf_counter()
        docker(*project, "up", "-d", "--wait", "--wait-timeout", "120")
        seconds.append(time.perf_counter() - start)
        docker(*project, "down", "-v", "--remove-orphans")
    return seconds


def markdown(found: dict[str, dict[str, float]], ready: dict[str, list[float]], compose: list[float],
             builds: dict[str, float] | None) -> str:  # fmt: skip
    rounds = len(compose)
    lines = [
        f"Command: `.venv/bin/python benchmarks/containers.py --write docs/containers.md"
        f"{' --cold' if builds else ''} --readme README.md` (`make bench-images`); "
        f"{len(ready['inference'])} rounds of start to ready, {rounds} of compose. Sizes as "
        "`docker image inspect` reports them (uncompressed).",
        "",
        "| image | size MB | budget MB | base image MB | its virtualenv MB |"
        + (" cold build s |" if builds else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if builds else ""),
    ]
    for service, facts in found.items():
        row = (f"| `{image(service)}` | {facts['size']:.0f} | {BUDGET_MB[service]} | {facts['base']:.0f} | "
               f"{facts['venv']:.0f} |")  # fmt: skip
        lines.append(row + (f" {builds[service]:.0f} |" if builds else ""))
    lines += ["", "| start | median s | min s | max s | target s |", "|---|---:|---:|---:|---:|"]
    rows: dict[str, tuple[list[float], str]] = {
        "inference container, `docker run` to /readyz 200 (model loaded, warmed up)": (
            ready["inference"],
            "3",
        ),
        "storage container, `docker run` to /readyz 200 (inference beside it)": (ready["storage"], "3"),
        "compose stack, `docker compose up -d --wait` to all healthy": (compose, "20"),
    }
    for what, (values, target) in rows.items():
        lines.append(
            f"| {what} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {target} |"
        )
    return "\n".join(lines)


def readme_table(found: dict[str, dict[str, float]], ready: dict[str, list[float]]) -> str:
    lines = ["| image | size | budget | start to ready |", "|---|---:|---:|---:|"]
    for service, facts in found.items():
        start = f"{statistics.median(ready[service]):.2f} s" if service in ready else "(a job)"
        lines.append(f"| {service} | {facts['size']:.0f} MB | {BUDGET_MB[service]} MB | {start} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of start to ready (default 5)")
    parser.add_argument("--compose-rounds", type=int, default=3, help="rounds of compose up (default 3)")
    parser.add_argument("--cold", action="store_true", help="also time builds without the cache (minutes)")
    parser.add_argument("--write", type=Path, help="replace the measured section of this markdown file")
    parser.add_argument("--readme", type=Path, help="replace the image table of this README")
    args = parser.parse_args()
    builds = cold_builds() if args.cold else None
    results: dict[str, Any] = {"sizes": sizes(), "ready": start_to_ready(args.rounds),
                               "compose": compose_to_healthy(args.compose_rounds)}  # fmt: skip
    table = markdown(results["sizes"], results["ready"], results["compose"], builds)
    print(table)
    if args.write:
        replace_section(args.write, START, END, table)
    if args.readme:
        replace_section(
            args.readme, README_START, README_END, readme_table(results["sizes"], results["ready"])
        )


if __name__ == "__main__":
    main()
