"""Write the values table of charts/cropseg/README.md from the comments in values.yaml.

python scripts/chart_values_table.py            # rewrite the table
python scripts/chart_values_table.py --check    # exit 1 when the README is stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "charts" / "cropseg"
START, END = "<!-- values:start -->", "<!-- values:end -->"


def rows(values: str) -> list[tuple[str, str, str]]:
    """(key path, default, description) for every commented key of values.yaml."""
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    found = []
    for line in values.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z]\w*):\s*(.*)$", line)
        if not match:
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        if comment:
            found.append((".".join(k for _, k in path), value or "(see values.yaml)", " ".join(comment)))
            comment = []
    return found


def table() -> str:
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default, description in rows((CHART / "values.yaml").read_text()):
        lines.append(f"| `{key}` | `{default}` | {description.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> int:
    readme = CHART / "README.md"
    text = readme.read_text()
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    updated = f"{before}{START}\n{table()}\n{END}{after}"
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
