"""The seed's brightness experiment (benchmarks/drift_experiment.py) on a small folder of images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "drift_experiment.py"


def field_image(rng: np.random.Generator, size: tuple[int, int] = (60, 80)) -> bytes:
    """A PNG of brown soil with noise and a few green patches."""
    height, width = size
    image = np.array([120, 90, 60], np.float32) * rng.uniform(0.7, 1.3) + rng.normal(
        0, 18, (height, width, 3)
    )
    for _ in range(rng.integers(2, 6)):
        y, x, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 9)
        yy, xx = np.ogrid[:height, :width]
        image[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = np.array([60, 150, 50]) * rng.uniform(0.8, 1.2)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flight")
    rng = np.random.default_rng(5)
    for index in range(120):
        (folder / f"tile_{index:03d}.png").write_bytes(field_image(rng))
    return folder


def experiment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--engine", "scipy", "--quiet", *args],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "DRIFT_WORKERS": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_unaltered_is_quiet_and_brightness_changes_are_found(images: Path, tmp_path: Path) -> None:
    doc = tmp_path / "drift.md"
    doc.write_text("before\n<!-- drift-experiment:start -->\nold\n<!-- drift-experiment:end -->\nafter\n")
    done = experiment("--images", str(images), "--count", "120", "--json", str(tmp_path / "rows.json"),
                      "--write", str(doc))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # the verdicts are right
    rows = json.loads((tmp_path / "rows.json").read_text())
    verdicts = {(row["case"], row["method"]): row["drift"] for row in rows}
    for method in ("KS per-image histograms", "KS image properties"):
        assert verdicts[("unaltered", method)] is False
        assert verdicts[("darker", method)] is True
        assert verdicts[("brighter", method)] is True
    assert verdicts[("blurred", "KS image properties")] is True
    blurred = next(r for r in rows if r["case"] == "blurred" and r["method"] == "KS image properties")
    assert "sharpness" in blurred["drifted"]
    assert "| darker | seed: KS over the average histogram |" in done.stdout
    table = (
        doc.read_text()
        .split("<!-- drift-experiment:start -->\n")[1]
        .split("\n<!-- drift-experiment:end -->")[0]
    )
    lines = table.splitlines()
    assert lines[0] == "reference: 60 images; each case: 60 other images of the same distribution"
    assert lines[2] == "| case | method | threshold | drift | distance | p-value | drifted |"
    assert len(lines) == 4 + len(rows)
    text = doc.read_text()
    assert text.startswith("before\n")
    assert text.endswith("\nafter\n")


@pytest.mark.slow
def test_too_few_images(tmp_path: Path) -> None:
    done = experiment("--images", str(tmp_path))
    assert done.returncode == 2
    assert "holds 0 images" in done.stderr
