"""The drift report's contract: its schema in /docs, and every stored report served as stored."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cropseg_drift.main import create_app
from drift_testing import settings_for
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from cropseg_core.contracts import DriftReport
from cropseg_core.store import StoreSettings, encode_json, open_store

TODAY = Path(__file__).parent / "testdata" / "report-20261207.json"
"""A report as a run of 2026-12-07 wrote it (scipy engine, 25 brightened uploads)."""


def first_shape(report: dict[str, Any]) -> dict[str, Any]:
    """The same report as the first drift monitor wrote it: no performance section, stage
    timings, layout, reference kind or reference text yet."""
    old = copy.deepcopy(report)
    for name in ("performance", "timings_s"):
        del old[name]
    del old["window"]["layout"]
    for name in ("kind", "sources", "text"):
        del old["reference"][name]
    return old


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data: Path, profile_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(data, profile_path), CollectorRegistry())) as test_client:
        yield test_client


def store_report(data: Path, report: dict[str, Any]) -> None:
    open_store(StoreSettings(path=data)).put(f"drift/reports/{report['id']}/report.json", encode_json(report))


def test_the_openapi_schema_shows_the_report_fields(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/drift/reports/latest", "/api/v1/drift/reports/{report_id}"):
        answer = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/DriftReport"}, path
    components = schema["components"]["schemas"]
    report = components["DriftReport"]
    first = {"id", "created_at", "status", "summary", "engine", "p_value", "images", "predictions",
             "skipped", "window", "reference", "detectors", "plots", "links", "duration_s"}  # fmt: skip
    assert first <= set(report["required"])
    assert {"performance", "timings_s"} <= set(report["properties"]) - set(report["required"])
    assert report["properties"]["status"]["enum"] == ["drift", "no_drift", "insufficient_data"]
    checks = report["properties"]["detectors"]["additionalProperties"]
    assert checks == {"$ref": "#/components/schemas/DriftCheck"}
    assert set(components["DriftCheck"]["required"]) == {"meta", "data"}
    assert "estimated_iou" in components["DriftPerformance"]["properties"]


@pytest.mark.parametrize("shape", ["today", "first"])
def test_a_stored_report_is_served_as_stored(client: TestClient, data: Path, shape: str) -> None:
    today = json.loads(TODAY.read_text())
    stored = today if shape == "today" else first_shape(today)
    DriftReport.model_validate(stored)
    store_report(data, stored)
    served = client.get(f"/api/v1/drift/reports/{stored['id']}")
    assert served.status_code == 200
    assert served.json() == stored  # nothing added (no defaults), nothing dropped (unnamed fields kept)
    assert client.get("/api/v1/drift/reports/latest").json() == stored


def test_a_report_with_fields_this_version_does_not_know_keeps_them(client: TestClient, data: Path) -> None:
    newer = json.loads(TODAY.read_text())
    newer["detectors"]["image_properties"]["data"]["effect_size"] = 0.8
    newer["window"]["since"] = "2026-12-01T00:00:00+00:00"
    newer["recommendation"] = {"action": "retrain"}
    store_report(data, newer)
    assert client.get(f"/api/v1/drift/reports/{newer['id']}").json() == newer


def test_a_report_without_its_verdict_does_not_validate() -> None:
    broken = json.loads(TODAY.read_text())
    del broken["status"]
    with pytest.raises(ValueError, match="status"):
        DriftReport.model_validate(broken)
