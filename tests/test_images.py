"""What each Dockerfile installs, run without a container engine: its pip steps in a clean
virtualenv (the pinned requirements resolve and install), then its entry point starts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
IMAGES = {
    "inference": "services/inference",
    "storage": "services/storage",
    "drift-monitor": "services/drift_monitor",
}


def install_targets(dockerfile: str) -> list[str]:
    """The packages of the Dockerfile's dependency layer (``pip install -c constraints.txt ...``)."""
    command = re.search(r"pip install -c constraints\.txt ([^\n\\&]+)", dockerfile).group(1)  # type: ignore[union-attr]
    return [str(REPO / target) if target.startswith("./") else target for target in shlex.split(command)]


@pytest.mark.parametrize("image", list(IMAGES))
def test_install_steps_and_entry_point_in_a_clean_venv(image: str, tmp_path: Path) -> None:
    folder = IMAGES[image]
    dockerfile = (REPO / folder / "Dockerfile").read_text()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    targets = install_targets(dockerfile)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(REPO / "constraints.txt"), *targets],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    entry = re.search(r'ENTRYPOINT \["([a-z-]+)"\]', dockerfile).group(1)  # type: ignore[union-attr]
    arguments = ["serve", "--help"] if image == "drift-monitor" else ["--help"]
    started = subprocess.run(
        [str(venv / "bin" / entry), *arguments], capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    has_alibi = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import alibi_detect"], capture_output=True
    )
    assert (has_alibi.returncode == 0) == (image == "drift-monitor"), (
        "only the drift image carries Alibi Detect"
    )
    has_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert has_torch.returncode != 0, "torch is for training only, never in an image"
