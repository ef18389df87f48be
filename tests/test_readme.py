"""The README as a newcomer uses it: every file and command it names exists, and the API examples
run, as written, against a started stack (only the ports and the working folder differ)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cropseg_stack.launcher import Stack

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
BIN = Path(sys.executable).parent
# Written by the README's own commands (make demo, make images, ...), or placeholders.
GENERATED = ("var/", ".venv/", "/path/to/", "mask.png", "overlay.png", "eval.json", "reports/")


def commands(block: str) -> list[str]:
    """The block's command lines, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def named_paths() -> set[str]:
    """Repository paths the README names: links, `@file` arguments and `path/like` code spans."""
    found = set(re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", README))
    found |= set(re.findall(r"@([\w./-]+\.\w+)", README))
    for span in re.findall(r"`([^`\s]+)`", README):
        top = span.split("/", 1)[0]
        if "/" in span and top and (REPO / top).is_dir():  # not a URL path such as /api/v1/info
            found.add(span.rstrip(".,:"))
    return {path.split("#")[0] for path in found if not path.startswith(GENERATED)}


def exists(path: str) -> bool:
    """A plain path, or a pattern such as ``charts/cropseg/ci/*-values.yaml`` or ``var/demo/{a,b}.png``."""
    fixed = re.split(r"[*{<]", path)[0]
    return (REPO / path).exists() if fixed == path else any(REPO.glob(fixed + "*"))


def test_every_file_the_readme_names_exists() -> None:
    missing = [path for path in sorted(named_paths()) if not exists(path)]
    assert missing == [], f"the README names files that do not exist: {missing}"


def test_every_make_target_and_cli_command_in_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    for target in set(re.findall(r"\bmake ([\w-]+)", README)) - {"sure"}:
        assert target in targets, f"README: `make {target}` is no target of the Makefile"
    lines = [line for block in BLOCKS for line in commands(block)]
    for line in lines:
        words = shlex.split(line)
        if words[0] in ("cropseg-model", "cropseg-drift", "cropseg-stack"):
            help_text = subprocess.run(
                [str(BIN / words[0]), words[1], "--help"], capture_output=True, text=True
            )
            assert help_text.returncode == 0, f"README: {line}\n{help_text.stderr}"
            for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                assert flag in help_text.stdout, f"README: {words[0]} {words[1]} has no option {flag}"
        elif words[0].endswith("loadtest/run.py"):
            profiles = subprocess.run(
                [sys.executable, str(REPO / "loadtest/run.py"), "--help"], capture_output=True, text=True
            )
            assert words[1] in profiles.stdout, f"README: no load-test profile {words[1]!r}"
        elif words[:2] == ["helm", "install"]:
            assert (REPO / words[3]).is_dir(), f"README: no chart {words[3]}"


def test_the_api_examples_run_as_written_against_a_started_stack(system: Stack, tmp_path: Path) -> None:
    urls = system.urls()
    (tmp_path / "model").symlink_to(REPO / "model")
    examples = [block for block in BLOCKS if "curl" in block]
    assert len(examples) >= 2
    for block in examples:
        script = block
        for port, service in (("8001", "inference"), ("8002", "storage"), ("8003", "drift-monitor")):
            script = script.replace(f"http://127.0.0.1:{port}", urls[service])
        script = script.replace("make demo", f"{BIN / 'cropseg-model'} demo --out var/demo")
        # As written, plus: stop at the first failing command, and an HTTP error is a failure.
        script = "set -euo pipefail\n" + script.replace("curl -s ", "curl -sS --fail-with-body ")
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (
            f"README example failed:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    assert (tmp_path / "overlay.png").stat().st_size > 0
