"""The memory contract: every service's largest request stays within 70 % of the memory limit
the chart gives its pod, sixteen of them at once within 80 %, and what a route reserves from the
process's memory budget before it allocates covers what it then takes, so that no request or mix
of requests a client may send can get a pod OOM-killed.

Runs benchmarks/memory.py as it runs for the docs (each service a fresh process, the largest
input the default settings allow to each route, peak RSS per request, then 16 of them at once;
the limits read from charts/cropseg/values.yaml). About eight minutes: the 40 MP segmentations
dominate (of 16 at once, the ones the budget cannot fit wait, then get 503).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 14 minutes

REPO = Path(__file__).resolve().parents[1]
ROUTES = 11  # inference: mask, overlay, OIP JSON, OIP binary; storage: upload, segment, overlay, 3 reads,
# a field upload's tus chunk
AT_ONCE = 16


def test_every_route_of_every_service_stays_within_its_memory_budget(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--concurrency", str(AT_ONCE),
         "--json", str(tmp_path / "rows.json")],
        cwd=REPO, capture_output=True, text=True, timeout=1500, check=False,
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
    over += [
        f"{row['service']} {row['route']} x{AT_ONCE}: {row['concurrent_peak_mib']} MiB, budget "
        f"{row['concurrent_budget_mib']} MiB of the chart's {row['limit_mib']} MiB"
        for row in rows
        if row["concurrent_peak_mib"] > row["concurrent_budget_mib"]
    ]
    assert not over, "over the memory budget:\n" + "\n".join(over)
    underestimated = [
        f"{row['service']} {row['route']}: took {row['peak_mib'] - row['before_mib']} MiB, reserved "
        f"{row['estimate_mib']} MiB ({row['cost']!r} in cropseg_core.web.limits.MEMORY_COST)"
        for row in rows
        if row["cost"] and row["peak_mib"] - row["before_mib"] > row["estimate_mib"]
    ]
    assert not underestimated, "reserved less than taken:\n" + "\n".join(underestimated)
    assert all(row["answered"] >= 1 for row in rows), "every route serves one of them at least"
