"""Every panel of the Grafana dashboard shows data: its PromQL, run against a real Prometheus
scraping the real services after real traffic and a drift run, returns finite values."""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cropseg_batch.fields import write_field
from cropseg_stack.launcher import Stack

from cropseg_core.masks import encode_png
from cropseg_model.synth import generate_tile

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "dashboards" / "cropseg.json"
RATE_WINDOW = "1m"  # what Grafana's $__rate_interval becomes at this scrape interval


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def drive_traffic(system: Stack, folder: Path) -> None:
    """Uploads, segmentations, evaluations, client errors, a field uploaded (tus) and segmented by
    the stack's field worker, then a drift run."""
    with httpx.Client(base_url=system.urls()["storage"], timeout=60) as client:
        for index in range(24):
            tile, encoded, ext = generate_tile(31, index)
            files = {"file": (f"field-{index}.{ext}", encoded), "label": ("mask.png", encode_png(tile.mask))}
            image = client.post("/api/v1/images", files=files).json()
            assert client.post(f"/api/v1/images/{image['id']}/segmentation").status_code == 201
            assert client.get(f"/api/v1/images/{image['id']}/evaluation").status_code == 200
        client.post("/api/v1/images", files={"file": ("again.png", encoded)})  # a duplicate
        assert client.get("/api/v1/images/not-an-id").status_code == 400
        assert client.get(f"/api/v1/images/{'0' * 64}").status_code == 404
        segment_a_field(client, write_field(folder / "field.tif", 1024, gsd_m=0.05))
    assert system.run_drift() in (0, 1)


def segment_a_field(client: httpx.Client, source: Path) -> None:
    """Upload ``source`` in one tus PATCH, ask for its segmentation and wait for the worker."""
    tus = {"Tus-Resumable": "1.0.0"}
    data = source.read_bytes()
    metadata = "filename " + base64.b64encode(source.name.encode()).decode()
    created = client.post(
        "/api/v1/fields/uploads",
        headers={**tus, "Upload-Length": str(len(data)), "Upload-Metadata": metadata},
    )
    assert created.status_code == 201, created.text
    chunk = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert client.patch(created.headers["location"], content=data, headers=chunk).status_code == 204
    field = created.headers["location"].rstrip("/").rsplit("/", 1)[1]
    assert client.post(f"/api/v1/fields/{field}/segment", json={}).status_code == 202
    deadline = time.monotonic() + 90
    while (job := client.get(f"/api/v1/fields/{field}").json()["job"])["status"] != "done":
        assert job["status"] in ("queued", "segmenting"), job
        assert time.monotonic() < deadline, f"the field worker did not finish: {job}"
        time.sleep(0.5)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: {response.text}"
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_the_dashboard_has_the_rows_it_promises() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Services", "Latency", "Batching and queue", "Segmentation results and storage", "Drift",
                    "Python processes", "Scrapes", "Fields"]  # fmt: skip
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] for panel in panels())


def test_every_panel_query_returns_data(system: Stack, tmp_path: Path) -> None:
    prometheus = system.urls()["prometheus"]
    deadline = time.monotonic() + 30
    while len(query(prometheus, "up == 1")) < 3:  # every counter has a sample from before the traffic
        assert time.monotonic() < deadline, "Prometheus never scraped the three services"
        time.sleep(0.5)
    time.sleep(1.5)
    drive_traffic(system, tmp_path)
    deadline = time.monotonic() + 60
    while not query(prometheus, "cropseg_drift_images_analysed"):  # the drift report has been scraped
        assert time.monotonic() < deadline, "Prometheus never scraped the drift monitor's report"
        time.sleep(1)
    while not finite(query(prometheus, "max(cropseg_storage_field_segmentation_seconds) > 0")):
        assert time.monotonic() < deadline, "storage's field gauges (read every 15 s) never showed the field"
        time.sleep(1)
    time.sleep(3)  # a few more scrapes, so every rate has two points after the traffic
    empty = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            if not finite(query(prometheus, expr)):
                empty.append(f"{panel['title']!r}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
