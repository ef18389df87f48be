"""Cold start: seconds from starting a service's process to its first 200 on /readyz.

    .venv/bin/python benchmarks/cold_start.py --write docs/performance.md

Each service is started as the local stack starts it (same command line and environment),
five times, with a fresh data folder per round. Inference loads the ONNX model and runs one
warm-up tile before it is ready; storage is ready when its store is writable and inference
answers, and is measured twice: on an empty store (it seeds the 12 sample tiles first) and
restarted on the same data; the drift monitor loads its reference profile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cropseg_stack.launcher import Stack, StackConfig
from cropseg_stack.sections import replace_section
from tqdm import tqdm

from cropseg_core.processes import free_port, running_service

START, END = "<!-- cold-start:start -->", "<!-- cold-start:end -->"
CASES = {
    "inference": "loads the model, runs one warm-up tile",
    "storage, empty store": "seeds 12 sample tiles, then checks store and inference",
    "storage, restart": "same data: nothing to seed",
    "drift-monitor": "loads the reference profile",
}


@contextmanager
def started(stack: Stack, name: str, times: dict[str, list[float]], case: str) -> Iterator[None]:
    """Run service ``name`` of ``stack`` for the block; record its start-to-ready seconds."""
    argv, _ = stack.command(name)
    began = time.perf_counter()
    with running_service(argv, f"{stack.urls()[name]}/readyz", env=stack.environment(), timeout_s=120):
        times[case].append(time.perf_counter() - began)
        yield


def measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in tqdm(range(rounds), desc="cold start", unit="round"):
        with tempfile.TemporaryDirectory() as data:
            config = StackConfig(
                data=Path(data), inference_port=free_port(), storage_port=free_port(),
                drift_port=free_port(), prometheus=False, drift_every_s=None,
            )  # fmt: skip
            stack = Stack(config)
            with started(stack, "inference", times, "inference"):
                with started(stack, "storage", times, "storage, empty store"):
                    pass
                with started(stack, "storage", times, "storage, restart"):
                    pass
            with started(stack, "drift-monitor", times, "drift-monitor"):
                pass
    return times


def markdown(times: dict[str, list[float]]) -> str:
    rounds = len(times["inference"])
    lines = [
        f"Command: `.venv/bin/python benchmarks/cold_start.py --write docs/performance.md` "
        f"({rounds} rounds, each service started as `make up` starts it).",
        "",
        "| service | what happens before ready | median s | min s | max s |",
        "|---|---|---:|---:|---:|",
    ]
    for case, what in CASES.items():
        values = times[case]
        lines.append(
            f"| {case} | {what} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="replace the cold-start section of this markdown file")
    args = parser.parse_args()
    table = markdown(measure(args.rounds))
    print(table)
    if args.write:
        replace_section(args.write, START, END, table)


if __name__ == "__main__":
    main()
