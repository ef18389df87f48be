"""The inference, levers, previous-model and fields benchmarks still run end to end (smoke runs: a
real service, the quantised and variant models built, both model files scored, every section
filled; timings are not asserted, this machine is shared)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.train
def test_levers_benchmark_measures_every_lever(tmp_path: Path) -> None:
    record = run_benchmark("levers.py", "--rounds", "1", "--limit", "4", out=tmp_path / "levers.json")
    assert len(record["session"]) == 5
    assert len(record["service"]) == 2
    quantised = {row["model"]: row for row in record["quantisation"]}
    assert len(quantised) == 3
    for row in quantised.values():  # int8 stays close to float32: the quantisation really ran
        assert row["mask_differs"] < 0.02, row
        assert 0.5 < row["iou_ews"] < 1, row
    assert len(record["architecture"]) == 6
    assert {row["size"] for row in record["encoding"]} == {"360x480", "4000x3000"}
    assert {row["stage"] for row in record["stages"]} >= {"decode", "session", "encode"}
    for section in ("session", "service", "quantisation", "architecture", "encoding", "stages"):
        for row in record[section]:
            assert all(math.isfinite(v) and v >= 0 for k, v in row.items() if k.endswith("ms")), row


@pytest.mark.slow
@pytest.mark.train
def test_inference_benchmark_completes(tmp_path: Path) -> None:
    record = run_benchmark("inference.py", "--runs", "3", "--requests", "8", out=tmp_path / "inference.json")
    assert len(record["http_concurrent"]) == 9
    assert record["flops_per_tile"] > 1e9
    assert record["cpu_peak_gflops"] > 0
    assert record["drone_photo"]["seconds"] > 0


@pytest.mark.slow
def test_previous_model_benchmark_scores_both_models(tmp_path: Path) -> None:
    record = run_benchmark(
        "previous_model.py", "--rounds", "1", "--limit", "3", out=tmp_path / "previous.json"
    )
    assert record["latency"]["previous_ms"] > 0
    assert record["latency"]["ratio_pipeline"] > 0
    quality = record["quality"]
    assert set(quality) == {"ews/val", "peanut/val", "synthetic/eval"}
    for scores in quality.values():
        assert 1 <= scores["images"] <= 3
        assert all(0 < scores[method] <= 1 for method in ("unet", "previous", "exg_otsu")), scores
    # two different files really ran: they cannot agree on every set
    assert any(scores["unet"] != scores["previous"] for scores in quality.values())


@pytest.mark.slow
def test_drift_error_rates_benchmark_runs_every_case(tmp_path: Path) -> None:
    record = run_benchmark("drift_error_rates.py", "--runs", "2", "--sizes", "20", out=tmp_path / "d.json")
    cases = {case["case"]: case for case in record["cases"]}
    assert len(cases) == 8
    assert all(len(case["windows"]) == 2 for case in cases.values())
    over = cases["over-exposed x1.6"]["windows"]
    assert all(min(window["p"].values()) < 1e-6 and window["cause"] == "exposure" for window in over)
    assert set(record["newcomer"]) == {
        "grey_histogram", "image_properties", "dataset", "prediction_vegetation_fraction",
        "prediction_has_vegetation",
    }  # fmt: skip


@pytest.mark.slow
def test_fields_benchmark_resumes_the_cut_upload_and_maps_the_field(tmp_path: Path) -> None:
    record = run_benchmark("fields.py", "--side", "3000", "--chunk-mib", "1", out=tmp_path / "fields.json")
    upload = record["upload"]
    assert 0.45 <= upload["received_at_cut_share"] < 1, upload  # cut half way...
    assert 0 <= upload["received_again_mib"] <= 1, upload  # ...and went on: at most a chunk sent twice
    assert len(upload["field_id"]) == 32
    assert 0 < record["worker_peak_mib"] < record["worker_limit_mib"]
    assert 0 < record["storage_peak_mib"] < record["storage_limit_mib"]
    assert record["worker_s"] > 0
    assert record["cli_s"] > 0
    assert 0 < record["first_paint_ms"] < 60_000
