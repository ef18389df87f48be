"""The seed's brightness experiment on a small folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cropseg_drift.cli import main
from cropseg_drift.experiment import format_table, run_experiment
from drift_testing import field_image, png


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flight")
    rng = np.random.default_rng(5)
    for index in range(120):
        (folder / f"tile_{index:03d}.png").write_bytes(png(field_image(rng, size=(60, 80))))
    return folder


def test_unaltered_is_quiet_and_brightness_changes_are_found(images: Path) -> None:
    rows = run_experiment(120, images=images, engine_name="scipy", workers=1, progress=False)
    verdicts = {(row["case"], row["method"]): row["drift"] for row in rows}
    for method in ("KS per-image histograms", "KS image properties"):
        assert verdicts[("unaltered", method)] is False
        assert verdicts[("darker", method)] is True
        assert verdicts[("brighter", method)] is True
    assert verdicts[("blurred", "KS image properties")] is True
    blurred = next(r for r in rows if r["case"] == "blurred" and r["method"] == "KS image properties")
    assert "sharpness" in str(blurred["drifted"])
    table = format_table(rows, 60, 60)
    assert table.splitlines()[2] == "| case | method | threshold | drift | distance | p-value | drifted |"
    assert len(table.splitlines()) == 4 + len(rows)


def test_the_command_exits_0_when_the_verdicts_are_right(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["experiment", "--images", str(images), "--count", "120", "--engine", "scipy", "--quiet"]) == 0
    )
    assert "| darker | seed: KS over the average histogram |" in capsys.readouterr().out


def test_too_few_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "--images", str(tmp_path), "--quiet"]) == 2
    assert "holds 0 images" in capsys.readouterr().err
