"""The CI smoke load test: the seed's high profile (50 users, 5/s) for 60 s, zero failures allowed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_smoke_profile_has_no_failures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "run.py"), "smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stats = next(tmp_path.glob("smoke/*/locust_stats.csv"))
    with stats.open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"info", "gallery", "image", "upload", "segment", "evaluation", "Aggregated"}
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert int(rows["Aggregated"]["Request Count"]) > 500  # 50 users, 1-5 s apart, for a minute
    assert (stats.parent / "report.html").is_file()
