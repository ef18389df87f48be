"""The README and the guides in docs/ as a newcomer uses them: every file and command they name
exists, commands run as written (``.venv/bin/...``), ``make help`` lists every target, and the API
examples run, as written, against a started stack (only the ports and the working folder differ)."""

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
# The README first: its examples make the files the others send (var/demo/tile.png).
DOCUMENTS = ["README.md"] + [
    f"docs/{name}.md" for name in ("api", "model", "drift", "operations", "deploy", "development")
]
TEXTS = {name: (REPO / name).read_text() for name in DOCUMENTS}
BLOCKS = [
    (name, block)
    for name, text in TEXTS.items()
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
]
BIN = Path(sys.executable).parent
CLIS = ("cropseg-model", "cropseg-drift", "cropseg-stack", "cropseg")
# Written by the documents' own commands (make demo, make images, ...), or placeholders.
GENERATED = ("var/", ".venv/", "/path/to/", "mask.png", "overlay.png", "eval.json", "reports/")
MAKEFILE = (REPO / "Makefile").read_text()


def commands(block: str) -> list[str]:
    """The block's command lines, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def named_paths(document: str) -> set[str]:
    """Repository paths a document names: links (relative to the document), `@file` arguments and
    `path/like` code spans (relative to the repository root, where its commands run)."""
    text = TEXTS[document]
    folder = (REPO / document).parent
    found = {
        str((folder / link).resolve().relative_to(REPO))
        for link in re.findall(r"\]\(((?!https?:|#)[^)\s#]+)", text)
    }
    found |= set(re.findall(r"@([\w./-]+\.\w+)", text))
    for span in re.findall(r"`([^`\s]+)`", text):
        top = span.split("/", 1)[0]
        if "/" in span and top and (REPO / top).is_dir():  # not a URL path such as /api/v1/info
            found.add(span.rstrip(".,:"))
    return {path.split("#")[0] for path in found if not path.startswith(GENERATED)}


def exists(path: str) -> bool:
    """A plain path, or a pattern such as ``charts/cropseg/ci/*-values.yaml`` or ``var/demo/{a,b}.png``."""
    fixed = re.split(r"[*{<]", path)[0]
    return (REPO / path).exists() if fixed == path else any(REPO.glob(fixed + "*"))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_file_a_document_names_exists(document: str) -> None:
    missing = [path for path in sorted(named_paths(document)) if not exists(path)]
    assert missing == [], f"{document} names files that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_link_to_a_section_finds_its_heading(document: str) -> None:
    folder = (REPO / document).parent
    for target, anchor in re.findall(r"\]\(([^)\s#]*\.md)#([\w-]+)\)", TEXTS[document]):
        headings = re.findall(r"^#+ (.+)$", (folder / target).read_text(), re.MULTILINE)
        slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
        assert anchor in slugs, f"{document}: {target}#{anchor} names no heading"


def test_every_make_target_and_cli_command_in_the_documents_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", MAKEFILE, re.MULTILINE))
    for document, text in TEXTS.items():
        for target in set(re.findall(r"\bmake ([\w-]+)", text)) - {"sure"}:
            assert target in targets, f"{document}: `make {target}` is no target of the Makefile"
    for document, block in BLOCKS:
        for line in commands(block):
            words = shlex.split(line)
            assert words[0] not in CLIS, f"{document}: {line!r} runs only as .venv/bin/{words[0]}"
            program = words[0].removeprefix(".venv/bin/")
            if program in CLIS:
                help_text = subprocess.run(
                    [str(BIN / program), words[1], "--help"], capture_output=True, text=True
                )
                assert help_text.returncode == 0, f"{document}: {line}\n{help_text.stderr}"
                for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                    assert flag in help_text.stdout, f"{document}: {program} {words[1]} has no option {flag}"
            elif program == "python" and words[1] == "loadtest/run.py":
                profiles = subprocess.run(
                    [sys.executable, str(REPO / "loadtest/run.py"), "--help"], capture_output=True, text=True
                )
                assert words[2] in profiles.stdout, f"{document}: no load-test profile {words[2]!r}"
            elif words[:2] == ["helm", "install"]:
                assert (REPO / words[3]).is_dir(), f"{document}: no chart {words[3]}"


def test_make_help_lists_every_target() -> None:
    phony = re.search(r"^\.PHONY: (.*)$", MAKEFILE, re.MULTILINE)
    assert phony is not None
    shown = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True)
    listed = set(re.findall(r"\bmake ([\w-]+)", shown.stdout))
    assert set(phony.group(1).split()) - listed == set()
    assert "four images" in shown.stdout


def test_the_original_project_is_named_not_assumed() -> None:
    """ "The seed" (the course project cropseg grew from) is explained in the README, and the
    guides say "the original project" instead of using the nickname."""
    assert 'university MLOps course project (called "the seed"' in TEXTS["README.md"]
    for document, text in TEXTS.items():
        prose = re.sub(r"^\|.*\|$", "", text, flags=re.MULTILINE)  # generated tables keep their labels
        assert not re.search(r"\bseed's\b|\bthe\s+seed\b(?!\")", prose), document


def test_the_api_examples_run_as_written_against_a_started_stack(system: Stack, tmp_path: Path) -> None:
    urls = system.urls()
    (tmp_path / "model").symlink_to(REPO / "model")
    examples = [(document, block) for document, block in BLOCKS if "curl" in block]
    assert {document for document, _ in examples} == {"README.md", "docs/api.md"}
    assert len(examples) >= 3
    for document, block in examples:
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
            f"{document} example failed:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    assert (tmp_path / "overlay.png").stat().st_size > 0
