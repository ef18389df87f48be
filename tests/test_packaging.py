"""Each of cropseg's packages builds without a warning of our own making (setuptools would, for
example, warn that a folder of data files is absent from `packages` and may be dropped)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = [
    "services/core",
    "services/inference",
    "services/storage",
    "services/drift_monitor",
    "model",
    "stack",
]


@pytest.mark.slow
@pytest.mark.parametrize("folder", PACKAGES)
def test_package_builds_without_warnings_and_ships_its_files(folder: str, tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools writes build/ beside the sources: not in the checkout
    shutil.copytree(
        REPO / folder, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ours = [
        line.strip() for line in (result.stdout + result.stderr).splitlines()
        if ("Warning" in line or "absent from" in line) and "byte-compiling is disabled" not in line
        and "Location 'file:" not in line
    ]  # fmt: skip
    assert ours == [], "\n".join(ours)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = (".py", ".js", ".html", ".css")
    sources = [p.relative_to(REPO / folder).as_posix() for p in (REPO / folder).glob("cropseg_*/**/*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix in shipped]  # fmt: skip
    assert sorted(set(sources) - set(names)) == [], "files of the package missing from its wheel"
