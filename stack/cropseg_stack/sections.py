"""Replace a marked section of a markdown file with freshly measured numbers: what the
benchmarks (``benchmarks/``) and the load-test report (``loadtest/report.py``) write into docs/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def replace_section(path: Path, start: str, end: str, text: str) -> None:
    """Put ``text`` between the ``start`` and ``end`` marker lines of ``path``."""
    content = path.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{path} has no {start} ... {end} section to replace")
    before, rest = content.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{text}\n{end}{after}")


def publish(
    table: str, results: Any, json_path: Path | None, write: Path | None, start: str, end: str
) -> None:
    """Print ``table``; keep the raw ``results`` as JSON and the table in a markdown file if asked."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    if write:
        replace_section(write, start, end, table)
