"""The memory contract: every service's largest request stays within 70 % of the memory limit
the chart gives its pod, so that no request a client may send can get a pod OOM-killed.

Runs benchmarks/memory.py as it runs for the docs (each service a fresh process, the largest
input the default settings allow to each route, peak RSS per request; the limits read from
charts/cropseg/values.yaml). About three minutes: the 40 MP segmentations dominate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUTES = 10  # inference: mask, overlay, OIP JSON, OIP binary; storage: upload, segment, overlay, 3 reads


def test_every_route_of_every_service_stays_within_its_memory_budget(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--json", str(tmp_path / "rows.json")],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == ROUTES
    over = [
        f"{row['service']} {row['route']} ({row['input']}): {row['peak_mib']} MiB, budget "
        f"{row['budget_mib']} MiB of the chart's {row['limit_mib']} MiB"
        for row in rows
        if row["peak_mib"] > row["budget_mib"]
    ]
    assert not over, "over the memory budget:\n" + "\n".join(over)
