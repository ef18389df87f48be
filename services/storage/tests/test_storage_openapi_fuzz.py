"""Schemathesis generates requests from the storage OpenAPI spec; none may get a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from cropseg_storage.main import create_app
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from storage_testing import SAMPLES, fake_inference, make_settings, routed

schemathesis.serializer.alias(
    ["image/png", "image/jpeg", "image/tiff", "application/offset+octet-stream"], "application/octet-stream"
)


def drift(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such report"}})


app = create_app(
    make_settings(Path(tempfile.mkdtemp(prefix="cropseg-fuzz-")), samples_path=SAMPLES),
    CollectorRegistry(),
    routed(inference=fake_inference, drift=drift),
)
started = TestClient(app).__enter__()  # run the lifespan once: store, seeded samples, clients
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
known_id = started.get("/api/v1/images", params={"limit": 1}).json()["items"][0]["id"]


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    if case.path_parameters and "image_id" in case.path_parameters and case.method != "DELETE":
        case.path_parameters["image_id"] = known_id  # reach the handlers; unknown ids are tested elsewhere
    response = case.call(app=app)
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    )
