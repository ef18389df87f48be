import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropseg_core.features import load_reference_profile
from cropseg_core.masks import IGNORE, encode_png
from cropseg_model.card import VersionError, record_version
from cropseg_model.cli import main
from cropseg_model.datasets import discover, read_mask
from cropseg_model.evaluation_report import EvaluationReport
from cropseg_model.pseudolabel import pseudo_mask


def test_generate_writes_the_requested_tiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiles"
    assert (
        main(
            [
                "-q",
                "generate",
                "--count",
                "3",
                "--seed",
                "5",
                "--out",
                str(out),
                "--height",
                "40",
                "--width",
                "50",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "wrote 3 tiles" in capsys.readouterr().out
    assert len(discover(out)) == 3


@pytest.mark.slow
def test_evaluate_prints_all_three_methods_and_writes_json(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "eval.json"
    argv = ["-q", "evaluate", "--synthetic", str(tiny_dataset), "--out", str(report)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for label in (
        "cropseg pipeline",
        "ExG + Otsu",
        "NDVI + Otsu",
        "(NIR − red) + Otsu",
        "Green filter + k-means",
        "exposure",
    ):
        assert label in printed
    saved = json.loads(report.read_text())["sets"][f"synthetic/{tiny_dataset.name}"]
    assert set(saved["layouts"]["rgb"]) == {"unet", "exg_otsu", "green_kmeans"}
    assert set(saved["layouts"]["nir_red"]) == {"unet", "unet_network_only", "ndvi_otsu", "difference_otsu"}
    assert saved["layouts"]["rgb"]["unet"]["images"] == 8
    robustness = saved["exposure_robustness"]
    assert set(robustness) == {"0.5", "0.7", "1", "1.4", "2"}
    # gain 1 is the unchanged set: it must reproduce the plain evaluation
    assert robustness["1"]["unet"] == saved["layouts"]["rgb"]["unet"]["iou_non_black"]
    assert {"scales", "enlargement"}.isdisjoint(saved)  # sweeps not run are absent, as they always were
    written = json.loads(report.read_text())
    assert written["synthetic_folder"] == str(tiny_dataset)
    assert written["real_folders"] == []
    assert EvaluationReport.model_validate(written).to_json() == written


def test_missing_data_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--data", str(tmp_path / "nope")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_unlabelled_folder_for_evaluation_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(encode_png(np.zeros((4, 4, 3), np.uint8)))
    assert main(["-q", "evaluate", "--data", str(tmp_path)]) == 2
    assert "a.png has no mask" in capsys.readouterr().err


def test_bad_threshold_is_rejected(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(tiny_dataset), "--threshold", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err


def test_pseudo_mask_keeps_only_agreeing_confident_pixels() -> None:
    probability = np.array([[0.95, 0.95, 0.05, 0.5]])
    baselines = [np.array([[255, 0, 0, 255]], np.uint8), np.array([[255, 0, 255, 255]], np.uint8)]
    both = pseudo_mask(probability, baselines, confidence=0.9, min_agree=2)
    np.testing.assert_array_equal(both, [[255, IGNORE, IGNORE, IGNORE]])
    one = pseudo_mask(probability, baselines, confidence=0.9, min_agree=1)
    np.testing.assert_array_equal(one, [[255, IGNORE, 0, IGNORE]])


@pytest.mark.slow
def test_pseudo_label_then_profile_on_a_flat_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flight"
    flat.mkdir()
    for image in sorted((tiny_dataset / "images").iterdir())[:3]:
        (flat / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "pseudo"
    assert main(["-q", "pseudo-label", "--images", str(flat), "--out", str(out)]) == 0
    samples = discover(out)
    assert len(samples) == 3
    masks = [read_mask(s.mask_path) for s in samples if s.mask_path]
    assert all(set(np.unique(m)) <= {0, 255, IGNORE} for m in masks)
    assert any((m == 0).any() for m in masks)

    profile_path = tmp_path / "profile.npz"
    assert main(["-q", "profile", "--data", str(tiny_dataset), "--out", str(profile_path)]) == 0
    profile = load_reference_profile(profile_path)
    assert profile.grey_histograms.shape == (40, 256)  # 8 four-band tiles in each of 5 layouts
    assert sorted(set(profile.layouts.tolist())) == ["cir", "nir_red", "red_nir", "rgb", "rgbn"]
    assert profile.for_layout("cir").grey_histograms.shape == (8, 256)


@pytest.mark.slow
def test_demo_runs_as_a_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cropseg_model.cli", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "vegetation" in result.stdout
    assert "latency" in result.stdout
    for name in ("tile.png", "mask.png", "truth.png", "overlay.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_version_names_one_model_file_forever(tmp_path: Path) -> None:
    ledger = tmp_path / "versions.json"
    assert record_version(ledger, "2.0.0", "a" * 64) == {"2.0.0": "a" * 64}
    assert record_version(ledger, "2.0.0", "a" * 64) == {"2.0.0": "a" * 64}  # the same file again: fine
    with pytest.raises(VersionError, match=r"version 2\.0\.0 already names the model file with sha256 aaaa"):
        record_version(ledger, "2.0.0", "b" * 64)
    assert record_version(ledger, "2.1.0", "b" * 64) == {"2.0.0": "a" * 64, "2.1.0": "b" * 64}
    assert json.loads(ledger.read_text()) == {"2.0.0": "a" * 64, "2.1.0": "b" * 64}
