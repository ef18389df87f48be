"""The CI smoke load test: the seed's high profile (50 users, 5/s) for 60 s, no failure allowed
but load shed with 503 + Retry-After (timings are not asserted: this machine is shared)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "loadtest"))
import report  # noqa: E402  (loadtest/ is a folder of scripts, not a package)
import run  # noqa: E402


@pytest.mark.slow
def test_smoke_profile_has_no_failures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "run.py"), "smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stats = next(tmp_path.glob("smoke/*/locust_stats.csv"))
    with stats.open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    names = {name.removesuffix(" shed") for name in rows}  # "segment shed": answered 503 + Retry-After
    assert names == {"page", "info", "gallery", "image", "upload", "segment", "evaluation", "Aggregated"}
    shed, others = run.failure_counts(stats.parent / "locust")
    assert not others
    assert int(rows["Aggregated"]["Failure Count"]) == shed
    assert int(rows["Aggregated"]["Request Count"]) > 500  # 50 users, 1-5 s apart, for a minute
    assert (stats.parent / "report.html").is_file()


def write_history(path: Path, rows: list[tuple[int, int, int, int]]) -> None:
    """Locust's full-history CSV: (second, users, segmentations so far, failures so far)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Timestamp", "User Count", "Name", "Total Request Count", "Total Failure Count",
                         "50%", "95%"])  # fmt: skip
        for second, users, done, failed in rows:
            writer.writerow([second, users, "segment", done, failed, 100 * users, 200 * users])
            writer.writerow([second, users, "Aggregated", done, failed, 100 * users, 200 * users])


def test_stress_steps_and_capacity(tmp_path: Path) -> None:
    # 10 users: 5/s for 30 s; 20 users: 8/s; 30 users: 8/s of which 3 failed (shedding began)
    rows = [(t, 10, 5 * t, 0) for t in range(30)]
    rows += [(30 + t, 20, 150 + 8 * t, 0) for t in range(30)]
    rows += [(60 + t, 30, 390 + 8 * t, 0 if t < 15 else 3) for t in range(30)]
    rows += [(90, 35, 630, 3)]  # a moment while users are spawned
    rows += [(91 + t, 40, 638 + 8 * t, 3 + 5 * t) for t in range(3)]  # cut short by the first 503s
    rows += [(94, 25, 654, 13), (95, 10, 654, 13)]  # users being stopped
    write_history(tmp_path / "history.csv", rows)
    steps = run.stress_steps(tmp_path / "history.csv")  # the first 10 s of each step left out
    assert [step["users"] for step in steps] == [10, 20, 30, 40]
    rates = [step["segmentations_per_s"] for step in steps]
    assert [round(rate, 6) if rate else rate for rate in rates] == [5, 8, round(149 / 19, 6), None]
    assert [step["failures"] for step in steps] == [0, 0, 3, 10]
    found = report.capacity({"steps": steps, "physical_limit": {"limit_tiles_per_s": 28.0}})
    assert found["best"]["users"] == 20
    assert found["shed_at_users"] == 30
    limit = {"limit_tiles_per_s": 28.0, "bare_onnxruntime_tiles_per_s": 18.0, "flops_per_tile": 1e10,
             "cpu_peak_flops_per_s": 2.8e11}  # fmt: skip
    text = "\n".join(report.stress_lines({"steps": steps, "started": "now", "physical_limit": limit}))
    assert "| 40 | - | 10 |" in text
    assert "**30 users**" in text


def test_curve_steps_give_rate_shed_share_and_segment_latency_per_user_count(tmp_path: Path) -> None:
    # 10 users: 6 requests/s, none shed; 20 users: 10/s, 1 in 10 shed from t=45
    rows = [(t, 10, 6 * t, 0) for t in range(30)]
    rows += [(30 + t, 20, 180 + 10 * t, 0 if t < 15 else t - 14) for t in range(30)]
    rows += [(60, 5, 480, 16)]  # users being stopped
    write_history(tmp_path / "history.csv", rows)
    steps = run.curve_steps(tmp_path / "history.csv")
    assert [step["users"] for step in steps] == [10, 20]
    assert [step["requests_per_s"] for step in steps] == [6, 10]
    assert steps[0]["shed_ratio"] == 0
    assert steps[1]["shed_ratio"] == pytest.approx(15 / 190)
    assert (steps[1]["segment_p50_ms"], steps[1]["segment_p95_ms"]) == (2000, 4000)
    assert "    20    10.0    7.89" in run.curve_table(steps)


def test_mix_section_shows_targets_shed_share_and_the_curve(tmp_path: Path) -> None:
    high = tmp_path / "reports" / "high" / "20261202T000000"
    high.mkdir(parents=True)
    requests = [
        {"Name": "segment", "Request Count": "300", "Median Response Time": "120", "95%": "400"},
        {"Name": "Aggregated", "Request Count": "2000", "Median Response Time": "20", "95%": "200"},
    ]
    summary = {"scale": 0.1, "duration_s": 1800, "started": "now", "commit": "abc", "requests": requests,
               "shed": 4, "other_failures": {}, "exit_code": 0}  # fmt: skip
    (high / "summary.json").write_text(json.dumps(summary))
    curve = tmp_path / "reports" / "curve" / "20261202T000000"
    curve.mkdir(parents=True)
    (curve / "summary.json").write_text(json.dumps({"started": "now", "commit": "abc"}))
    write_history(curve / "locust_stats_history.csv", [(t, 10, 6 * t, 0) for t in range(30)])
    text = report.mix_section(tmp_path / "reports", tmp_path / "img")
    assert "**4 shed (0.20%**" in text
    assert "| segment | 300 | 120 | 400 | 2500 |" in text
    assert "| 10 | 6.0 | 0.00% | 1000 | 2000 |" in text
    assert (tmp_path / "img" / "mix-curve.png").is_file()


def test_shed_load_is_counted_apart_from_failures(tmp_path: Path) -> None:
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences\n"
        "POST,segment,CatchResponseError('shed: 503 Retry-After'),7\n"
        "POST,upload,CatchResponseError('shed: 503 Retry-After'),2\n"
        "POST,segment,CatchResponseError('segment: 500 boom'),1\n"
    )
    assert run.failure_counts(tmp_path / "locust") == (
        9,
        {"segment: CatchResponseError('segment: 500 boom')": 1},
    )


def test_memory_trend_is_the_least_squares_slope() -> None:
    assert run.trend([(0, 100), (3600, 100), (7200, 100)]) == 0
    assert run.trend([(0, 100), (1800, 106), (3600, 108), (5400, 118)]) * 3600 == pytest.approx(11.2)
    assert run.trend([(0, 100)]) == 0
