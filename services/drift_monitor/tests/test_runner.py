"""The CronJob's run end to end on a store: reports, exit codes, skipped images, the lock, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cropseg_drift import report as report_module
from cropseg_drift.cli import main
from cropseg_drift.lock import LOCK_KEY, RunLockedError, run_lock
from cropseg_drift.metrics import DriftCollector
from cropseg_drift.report import LOG_STREAM, REPORT_ID
from cropseg_drift.runner import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, execute, run
from drift_testing import add_uploads, make_profile, png, settings_for, write_profile
from prometheus_client import generate_latest

from cropseg_core.confidence import confidence_counts
from cropseg_core.features import ReferenceProfile
from cropseg_core.repository import ImageRepository
from cropseg_core.settings import ImageLimits
from cropseg_core.store import BlobStore, StoreSettings, open_store

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def store_at(data: Path) -> BlobStore:
    return open_store(StoreSettings(path=data))


@pytest.mark.slow
def test_no_drift_on_uploads_like_the_reference(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    add_uploads(store, 40)
    result = run(settings_for(data, profile_path))
    assert (result.exit_code, result.status) == (EXIT_OK, "no_drift"), result.message
    assert result.report_id is not None
    assert REPORT_ID.fullmatch(result.report_id)
    files = {b.key.rsplit("/", 1)[1] for b in store.list_blobs(f"drift/reports/{result.report_id}/")}
    assert files == {
        "report.json",
        "report.html",
        "grey_histogram.png",
    }  # no drifted feature: no feature plots
    report = store.get_json(f"drift/reports/{result.report_id}/report.json")
    assert (report["images"], report["predictions"], report["engine"]) == (40, 40, "alibi")
    assert set(report["detectors"]) == {
        "grey_histogram",
        "image_properties",
        "dataset",
        "prediction_vegetation_fraction",
        "prediction_has_vegetation",
    }
    assert all(set(check) == {"meta", "data"} for check in report["detectors"].values())
    assert [b.key for b in store.list_blobs("drift/features/")] == [
        f"drift/features/{result.report_id}-features.npz"
    ]
    log = store.read_records(LOG_STREAM)
    assert [(entry["outcome"], entry["exit_code"], entry["report_id"]) for entry in log] == [
        ("no_drift", 0, result.report_id)
    ]


@pytest.mark.slow
def test_drift_on_brightened_uploads_fails_the_run(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    add_uploads(store, 40, brightness=1.5)
    result = run(settings_for(data, profile_path, engine="scipy"))
    assert (result.exit_code, result.status) == (EXIT_DRIFT, "drift")
    assert result.report is not None
    assert "brightness" in result.report["detectors"]["image_properties"]["data"]["drifted"]
    names = {plot["file"] for plot in result.report["plots"]}
    assert {"grey_histogram.png", "brightness.png", "dataset_importances.png"} <= names
    html = store.get(f"drift/reports/{result.report_id}/report.html").decode()
    assert "data:image/png;base64," in html  # self-contained
    assert "brightness" in html
    tolerant = run(settings_for(data, profile_path, engine="scipy", fail_on_drift=False))
    assert (tolerant.exit_code, tolerant.status) == (EXIT_OK, "drift")


@pytest.mark.slow
def test_the_window_takes_the_newest_uploads(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    add_uploads(store, 30, brightness=1.5, seed=1)
    add_uploads(store, 30, seed=2)  # newer, like the reference
    result = run(settings_for(data, profile_path, window_images=30))
    assert (result.status, result.report["images"]) == ("no_drift", 30)  # type: ignore[index]


@pytest.mark.slow
def test_a_run_checks_one_layout_against_its_own_reference_rows(data: Path, tmp_path: Path) -> None:
    """RGB uploads and their predictions are left out of a CIR run; a profile without CIR rows
    is an error that says to rebuild it, not a comparison of CIR images with RGB ones."""
    store = store_at(data)
    ids = add_uploads(store, 25)
    repository = ImageRepository(store, ImageLimits())
    for image_id in ids[:21]:
        repository.set_layout(image_id, "cir")
    for image_id in ids[:21]:  # what storage records once a CIR image is segmented
        store.append_record("predictions/2026-01-01", {
            "image_id": image_id, "source": "upload", "layout": "cir", "vegetation_fraction": 0.2,
            "created_at": "2026-01-01T00:00:00+00:00"})  # fmt: skip
    rgb_rows = make_profile(60)
    mixed = ReferenceProfile(
        *(np.concatenate([a, a]) for a in (rgb_rows.grey_histograms, rgb_rows.properties,
          rgb_rows.vegetation_fraction, rgb_rows.predicted_vegetation_fraction, rgb_rows.image_names)),
        layouts=np.array(["rgb"] * 60 + ["cir"] * 60), sources=np.concatenate([rgb_rows.sources] * 2),
        meta=rgb_rows.meta)  # fmt: skip
    result = run(settings_for(data, write_profile(tmp_path / "mixed.npz", mixed), layout="cir"))
    assert result.report is not None, result.message
    assert (result.report["images"], result.report["predictions"]) == (21, 21)
    assert result.report["window"]["layout"] == "cir"
    only_rgb = run(settings_for(data, write_profile(tmp_path / "rgb.npz", rgb_rows), layout="cir"))
    assert only_rgb.exit_code == EXIT_ERROR
    assert "no images in layout 'cir'" in only_rgb.message
    with pytest.raises(ValueError, match="use one of rgb, cir"):
        settings_for(data, tmp_path / "rgb.npz", layout="ndvi")


@pytest.mark.slow
def test_the_iou_estimate_without_labels_and_the_measured_iou_beside_it(data: Path, tmp_path: Path) -> None:
    profile = make_profile()
    tracking = {"f/val": {"measured_iou": 0.88, "estimated_iou": 0.9}}
    profile.meta["iou_estimate"] = {"temperature": 1.0, "expected_iou": 0.9, "calibrated_on": ["f/select"],
                                    "tracking": tracking}  # fmt: skip
    path = write_profile(tmp_path / "profile.npz", profile)
    sure = np.full((100, 100), 0.01, np.float32)
    sure[:, :30] = 0.99  # 30 % plant, every pixel nearly certain: an estimate near 1
    unsure = np.where(sure > 0.5, 0.6, 0.3).astype(np.float32)  # the same mask, hesitant: far lower
    store = store_at(data)
    add_uploads(store, 25, confidence=confidence_counts(sure, 0.55))
    quiet = run(settings_for(data, path))
    assert quiet.report is not None, quiet.message
    performance = quiet.report["performance"]
    assert (performance["status"], performance["estimated_iou"] > 0.95) == ("ok", True)
    assert (performance["measured_iou"], performance["labelled_images"]) == (None, 0)
    assert "Estimated IoU without labels: 0.9" in performance["text"]

    repository = ImageRepository(store, ImageLimits())
    labelled = add_uploads(store, 25, seed=2, confidence=confidence_counts(unsure, 0.55))
    for image_id in labelled[:3]:  # labelled all plant; the stored masks say all soil: IoU 0
        record = repository.get(image_id)
        repository.put_label(image_id, png(np.full((record.height, record.width), 255, np.uint8)))
    loud = run(settings_for(data, path, window_images=25))
    assert loud.report is not None, loud.message
    performance = loud.report["performance"]
    assert (performance["status"], performance["estimated_iou"] < 0.6) == ("dropped", True)
    assert (performance["measured_iou"], performance["labelled_images"]) == (0.0, 3)
    assert "likely doing worse on these uploads" in performance["text"]
    assert "Measured on 3 labelled uploads: 0.00." in performance["text"]
    metrics = generate_latest(DriftCollector(store)).decode()  # what Prometheus scrapes
    assert 'cropseg_drift_iou{kind="estimated"}' in metrics
    assert 'cropseg_drift_detected{check="estimated_iou"} 1.0' in metrics


@pytest.mark.slow
def test_too_few_images_is_not_a_verdict(data: Path, profile_path: Path) -> None:
    add_uploads(store_at(data), 5)
    result = run(settings_for(data, profile_path))
    assert (result.exit_code, result.status) == (EXIT_OK, "insufficient_data")
    assert result.message == (
        "Not enough rgb images for a verdict yet: 5 in the window, at least 20 needed (15 more)."
    )


@pytest.mark.slow
def test_unreadable_image_is_reported_and_skipped(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    ids = add_uploads(store, 25)
    broken = next(
        b.key for b in store.list_blobs(f"images/{ids[0][:2]}/") if b.key.endswith(".png") and ids[0] in b.key
    )
    store.put(broken, b"\x89PNG\r\n\x1a\n garbage")  # a damaged file on the volume
    store.delete(
        next(
            b.key
            for b in store.list_blobs(f"images/{ids[1][:2]}/")
            if ids[1] in b.key and b.key.endswith(".png")
        )
    )
    result = run(settings_for(data, profile_path))
    assert result.exit_code == EXIT_OK
    assert result.report is not None
    skipped = {entry["id"]: entry["reason"] for entry in result.report["skipped"]}
    assert set(skipped) == {ids[0], ids[1]}
    assert "truncated or corrupt" in skipped[ids[0]] or "invalid" in skipped[ids[0]]
    assert "not found" in skipped[ids[1]]
    assert result.report["images"] == 23


def test_errors_exit_2_with_the_reason_and_a_log_line(data: Path, tmp_path: Path) -> None:
    store = store_at(data)
    result = run(settings_for(data, tmp_path / "missing.npz"))
    assert (result.exit_code, result.status) == (EXIT_ERROR, "error")
    assert "cannot read the reference profile" in result.message
    assert store.read_records(LOG_STREAM) == []  # the store was never opened: nothing to log to
    (tmp_path / "bad.npz").write_bytes(b"not a profile")
    assert run(settings_for(data, tmp_path / "bad.npz")).exit_code == EXIT_ERROR


@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_holds_the_lock(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    add_uploads(store, 25)
    with run_lock(store, ttl_s=60):
        with pytest.raises(RunLockedError):
            execute(settings_for(data, profile_path), make_profile(), store)
        result = run(settings_for(data, profile_path))
        assert result.exit_code == EXIT_ERROR
        assert "another drift run" in result.message
        assert store.read_records(LOG_STREAM)[-1]["outcome"] == "error"
    assert not store.exists(LOCK_KEY)  # released
    assert run(settings_for(data, profile_path)).exit_code == EXIT_OK


@pytest.mark.slow
def test_a_stale_lock_is_taken_over(data: Path, profile_path: Path) -> None:
    store = store_at(data)
    add_uploads(store, 25)
    past = time.time() - 7200
    store.put(
        LOCK_KEY, json.dumps({"owner": "dead-pod", "acquired_at": past, "expires_at": past + 3600}).encode()
    )
    assert run(settings_for(data, profile_path)).exit_code == EXIT_OK
    assert not store.exists(LOCK_KEY)


def test_an_unexpected_failure_is_an_error_not_drift(
    data: Path, profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_uploads(store_at(data), 25)

    def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("cropseg_drift.runner.run_checks", broken)
    result = run(settings_for(data, profile_path))
    assert (result.exit_code, result.message) == (EXIT_ERROR, "unexpected error: ZeroDivisionError: a bug")


@pytest.mark.slow
def test_a_report_is_visible_only_once_whole(
    data: Path, profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(data)
    add_uploads(store, 25)

    def crash(*args: object) -> str:
        raise OSError("disk full while writing the page")

    monkeypatch.setattr(report_module, "render_html", crash)
    result = run(settings_for(data, profile_path))
    assert result.exit_code == EXIT_ERROR
    assert "disk full" in result.message
    assert not [b for b in store.list_blobs("drift/reports/") if b.key.endswith("report.json")]
    assert not store.exists(LOCK_KEY)


@pytest.mark.slow
def test_runs_on_the_s3_backend_too(blob_store: BlobStore, profile_path: Path, tmp_path: Path) -> None:
    add_uploads(blob_store, 25, brightness=1.5)
    settings = settings_for(tmp_path, profile_path, engine="scipy")
    result = execute(settings, make_profile(), blob_store)
    assert result.status == "drift"
    assert blob_store.exists(f"drift/reports/{result.report_id}/report.json")


@pytest.mark.slow
def test_cli_prints_the_summary_table(data: Path, profile_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    add_uploads(store_at(data), 25, brightness=1.5)
    monkeypatch.setenv("DRIFT_REFERENCE_PATH", str(profile_path))
    monkeypatch.setenv("DRIFT_MIN_SAMPLES", "20")
    monkeypatch.setenv("DRIFT_CLASSIFIER_TREES", "20")
    assert main(["run", "--data", str(data), "--engine", "scipy", "--no-progress"]) == EXIT_DRIFT
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("DRIFT: Recent rgb uploads differ from the images the model learned from:")
    assert "brightness up" in lines[0]
    assert "Likely the exposure changed" in lines[0]
    assert lines[1].startswith("No IoU estimate: the reference profile has no IoU calibration")
    assert lines[3].split()[:4] == ["check", "detector", "verdict", "p-value"]
    properties = next(line for line in lines if line.startswith("image properties"))
    assert "brightness" in properties
    assert re.search(r"\s(\d\.\d{3}|\d\.\de-\d\d|<1e-300)\s", properties)  # a short p-value, no wrapping
    assert "reference: 200 fields/train images (the training images of cropseg-unet 1.0.0)" in lines[-2]
    assert (
        main(["run", "--data", str(data), "--no-fail-on-drift", "--engine", "scipy", "--no-progress"])
        == EXIT_OK
    )
    monkeypatch.setenv("DRIFT_P_VALUE", "3")
    assert main(["run", "--data", str(data)]) == EXIT_ERROR
    assert "invalid settings" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_ends_a_run_at_once_releasing_its_lock(data: Path, profile_path: Path) -> None:
    """A Job's pod deleted, or compose stopping the loop: exit 143 now, no lock left for an hour."""
    add_uploads(store_at(data), 60)
    environment = {**os.environ, "DRIFT_REFERENCE_PATH": str(profile_path), "DRIFT_WORKERS": "1"}
    run_process = subprocess.Popen(
        [sys.executable, "-m", "cropseg_drift.cli", "run", "--data", str(data), "--no-progress"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = data / LOCK_KEY
    deadline = time.monotonic() + 60
    while not lock.exists():
        assert run_process.poll() is None, run_process.communicate()
        assert time.monotonic() < deadline, "the run never took its lock"
        time.sleep(0.02)
    run_process.send_signal(signal.SIGTERM)
    _, err = run_process.communicate(timeout=30)
    assert run_process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert not lock.exists()
    assert not list((data / "drift" / "reports").glob("*/report.json")), "no half report"


def test_cli_shows_chooses_and_resets_the_reference(data: Path, profile_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    add_uploads(store_at(data), 22)
    monkeypatch.setenv("DRIFT_REFERENCE_PATH", str(profile_path))
    monkeypatch.setenv("DRIFT_WORKERS", "1")
    assert main(["reference", "show", "--data", str(data)]) == 0
    training = "200 fields/train images (the training images of cropseg-unet 1.0.0)"
    assert capsys.readouterr().out == f"rgb      {training}\n"
    assert main(["reference", "use", "--data", str(data), "--first", "20", "--min-samples", "20"]) == 0
    assert "rgb      uploads chosen as the reference on " in capsys.readouterr().out
    assert main(["reference", "use", "--data", str(data)]) == 2
    assert "use needs --report ID, or --since / --until / --first" in capsys.readouterr().err
    assert main(["reference", "use", "--data", str(data), "--report", "20260101T000000000000Z"]) == 2
    assert "no drift report 20260101T000000000000Z" in capsys.readouterr().err
    assert main(["reference", "reset", "--data", str(data)]) == 0
    assert "training images" in capsys.readouterr().out


@pytest.mark.slow
def test_the_html_report_fits_a_phone(data: Path, profile_path: Path, browser: Browser) -> None:
    store = store_at(data)
    add_uploads(store, 40, brightness=1.5)
    result = run(settings_for(data, profile_path, engine="scipy", fail_on_drift=False))
    html = store.get(f"drift/reports/{result.report_id}/report.html").decode()
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_content(html)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no page-wide sideways scroll
    assert page.locator("table").bounding_box()["width"] > 300  # type: ignore[index]  # the table scrolls alone
    page.close()
