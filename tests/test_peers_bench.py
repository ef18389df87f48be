"""The serving-peers benchmark still runs: every peer's venv builds from PyPI, every server answers
the workload's mask byte for byte, and each scenario completes (a smoke run: timings are not
asserted, this machine is shared)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVERS = {"cropseg", "fastapi", "litserve", "bentoml", "mlserver", "kserve", "ray"}


@pytest.mark.slow
def test_every_peer_serves_the_same_masks_and_the_benchmark_completes(tmp_path: Path) -> None:
    setup = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/peers/peers.py"), "setup"],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    results = tmp_path / "peers.json"
    smoke = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/peers/bench.py"), "--smoke", "--json", str(results)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    record = json.loads(results.read_text())
    rows = {row["name"]: row for row in record["rows"]}
    assert set(rows) == SERVERS
    for name, row in rows.items():
        assert math.isfinite(row["single_p50_ms"]), name
        assert row["c8_per_s"] > 0, name
        assert row["overload_answered"] + row["overload_refused"] > 0, name
        assert not row["errors"], (name, row["errors"])
    assert "| cropseg inference |" in smoke.stdout
