"""`make test` says what it takes and changes before it starts, and a user without root who could
not run the container tests is stopped up front with one line, instead of failing halfway.

The preflight is run as a non-root user (``nobody`` when the suite runs as root, as in CI; the
user running the suite otherwise) with a ``docker`` that answers nothing first on PATH: the case
of a user without the engine, whatever this host has. It installs nothing (it only asks
scripts/system-deps.sh and scripts/container-engine.sh for their ``--plan``/``--check``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE_MAKE = {
    k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
}
"""The environment without the variables of the make that runs this suite (make test, make test-fast),
which would turn the make below into a sub-make (directory lines, inherited flags)."""
PREFLIGHT_SCRIPTS = ("scripts/test-preflight.sh", "scripts/system-deps.sh", "scripts/container-engine.sh")


@pytest.fixture(scope="module")
def as_user() -> Iterator[tuple[Path, str]]:
    """A world-readable copy of what the preflight reads (the checkout may sit in root's home), and
    a PATH whose ``docker`` fails as it does for a user who cannot reach an engine."""
    folder = Path(tempfile.mkdtemp(prefix="cropseg-preflight-"))
    for name in ("Makefile", "charts/cropseg/Chart.yaml", *PREFLIGHT_SCRIPTS):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, folder / name)
    docker = folder / "no-engine" / "docker"
    docker.parent.mkdir()
    docker.write_text("#!/bin/sh\necho 'permission denied while trying to connect' >&2\nexit 1\n")
    docker.chmod(0o755)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == docker else 0o644)
    yield folder, f"{docker.parent}:{os.environ['PATH']}"
    shutil.rmtree(folder)


def preflight_as_user(copy: tuple[Path, str], *variables: str) -> subprocess.CompletedProcess[str]:
    """``make test-preflight`` as ``nobody`` when the suite runs as root (as in CI), else as the
    user running it."""
    folder, path = copy
    command = ["env", f"PATH={path}", "make", "--no-print-directory", "test-preflight", *variables]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "nobody", "--", *command]
    return subprocess.run(
        command,
        cwd=folder,
        env=OUTSIDE_MAKE,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_make_test_runs_the_preflight_before_anything_else() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, env=OUTSIDE_MAKE, capture_output=True, text=True, timeout=120
    )
    assert dry_run.returncode == 0, dry_run.stderr
    first = dry_run.stdout.splitlines()[0]
    assert first == "CONTAINERS=yes bash scripts/test-preflight.sh", dry_run.stdout[:500]
    assert "CROPSEG_CONTAINERS=yes" in dry_run.stdout  # the switch reaches pytest


def test_without_root_or_engine_one_line_says_what_is_missing_and_how_to_run_the_rest(
    as_user: tuple[Path, str],
) -> None:
    result = preflight_as_user(as_user)
    assert result.returncode == 2, result.stdout + result.stderr  # make stops at test-preflight
    assert "test-preflight] Error 1" in result.stderr
    lines = result.stdout.splitlines()
    assert "about 50 minutes" in lines[0]
    assert len(lines) == 2, result.stdout
    stop = lines[1]
    assert "(not root): no Docker engine answers" in stop
    assert "`sudo make test`" in stop
    assert "`make test CONTAINERS=no`" in stop


def test_containers_no_lets_a_user_without_root_run_the_rest(as_user: tuple[Path, str]) -> None:
    result = preflight_as_user(as_user, "CONTAINERS=no")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left out (CONTAINERS=no) and reported as skipped" in result.stdout


def test_a_misspelt_switch_is_refused() -> None:
    result = subprocess.run(
        ["bash", "scripts/test-preflight.sh"],
        cwd=REPO,
        env={**os.environ, "CONTAINERS": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CONTAINERS is yes or no, not 'off'" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the root case: what CI and `sudo make test` see")
def test_as_root_it_lists_every_change_to_the_host_before_it_starts() -> None:
    plan = subprocess.run(
        "bash scripts/system-deps.sh --plan; bash scripts/container-engine.sh --plan",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    result = subprocess.run(
        ["bash", "scripts/test-preflight.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if plan:
        assert "as root, before the tests, it changes this host" in result.stdout
        for step in plan:
            assert f"    {step}" in result.stdout
    else:
        assert "nothing to install" in result.stdout
