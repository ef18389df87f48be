"""Schemathesis generates requests from the drift-monitor OpenAPI spec; none may get a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from cropseg_drift.main import create_app
from cropseg_drift.runner import run
from drift_testing import add_uploads, make_profile, settings_for, write_profile
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

from cropseg_core.store import StoreSettings, open_store

folder = Path(tempfile.mkdtemp(prefix="cropseg-drift-fuzz-"))
add_uploads(open_store(StoreSettings(path=folder / "data")), 25)
drift_settings = settings_for(
    folder / "data", write_profile(folder / "profile.npz", make_profile(60)), engine="scipy"
)
report_id = run(drift_settings).report_id
app = create_app(drift_settings, CollectorRegistry())
TestClient(app).__enter__()  # run the lifespan once: store, profile, launcher
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    if case.path_parameters and "report_id" in case.path_parameters:
        case.path_parameters["report_id"] = report_id  # reach the handlers; unknown ids are tested elsewhere
    response = case.call(app=app)
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    )
