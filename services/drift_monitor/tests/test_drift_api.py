"""The drift-monitor API: reports, files, on-demand runs, metrics, authentication."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cropseg_drift.lock import run_lock
from cropseg_drift.main import create_app
from cropseg_drift.runner import run
from drift_testing import add_uploads, settings_for
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from cropseg_core.store import StoreSettings, open_store

TOKEN = "drift-token-of-at-least-16-chars"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    add_uploads(open_store(StoreSettings(path=data)), 25, brightness=1.5)
    return data


@pytest.fixture
def client(data: Path, profile_path: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings_for(data, profile_path, engine="scipy"), CollectorRegistry())
    ) as test_client:
        yield test_client


def wait_for(client: TestClient, run_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        state = client.get(f"/api/v1/drift/runs/{run_id}").json()
        if state["status"] != "running":
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_no_report_yet(client: TestClient) -> None:
    assert client.get("/api/v1/drift/reports").json() == {"items": [], "next_cursor": None}
    missing = client.get("/api/v1/drift/reports/latest")
    assert missing.status_code == 404
    assert "POST /api/v1/drift/runs" in missing.json()["error"]["message"]


def test_on_demand_run_then_reports_and_files(client: TestClient) -> None:
    started = client.post("/api/v1/drift/runs")
    assert started.status_code == 202
    body = started.json()
    assert (body["status"], body["backend"]) == ("running", "local")
    assert started.headers["location"] == f"/api/v1/drift/runs/{body['id']}"
    state = wait_for(client, body["id"])
    assert (state["status"], state["outcome"], state["exit_code"]) == ("succeeded", "drift", 1)
    assert state["report"] == f"/api/v1/drift/reports/{body['id']}"
    listed = client.get("/api/v1/drift/reports").json()["items"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert listed[0]["status"] == "drift"
    assert listed[0]["links"]["html"].endswith("/files/report.html")
    latest = client.get("/api/v1/drift/reports/latest").json()
    assert latest == client.get(str(state["report"])).json()
    assert latest["detectors"]["image_properties"]["data"]["is_drift"] is True
    for plot in latest["plots"]:
        image = client.get(plot["url"])
        assert (image.status_code, image.headers["content-type"]) == (200, "image/png")
        assert image.content.startswith(b"\x89PNG")
    page = client.get(latest["links"]["html"])
    assert page.headers["content-type"].startswith("text/html")
    assert "Drift report" in page.text


def test_reports_paginate_newest_first(client: TestClient, data: Path, profile_path: Path) -> None:
    ids = [run(settings_for(data, profile_path, engine="scipy")).report_id for _ in range(3)]
    first = client.get("/api/v1/drift/reports", params={"limit": 2}).json()
    second = client.get("/api/v1/drift/reports", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [i["id"] for i in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/drift/reports/nonsense", 400),
        ("/api/v1/drift/reports/20990101T000000000000Z", 404),
        ("/api/v1/drift/reports/20990101T000000000000Z/files/report.html", 404),
        ("/api/v1/drift/reports/20990101T000000000000Z/files/..%2F..%2Fimages", 404),  # no such route
        ("/api/v1/drift/reports/20990101T000000000000Z/files/evil.sh", 400),
        ("/api/v1/drift/reports?cursor=zzz", 400),
        ("/api/v1/drift/runs/nonsense", 404),
        ("/api/v1/drift/runs/20990101T000000000000Z", 404),
        # Digits of other scripts (fullwidth, Arabic-Indic) match \d but are no report id: not a 500
        ("/api/v1/drift/reports/２０２６１２０２T０００００００００００Z", 400),
        ("/api/v1/drift/reports/٢٠٢٦١٢٠٢T٠٠٠٠٠٠٠٠٠٠٠٠Z/files/report.html", 400),
        ("/api/v1/drift/reports?cursor=２０２６１２０２T０００００００００００Z", 400),
        ("/api/v1/drift/runs/２０２６１２０２T０００００００００００Z", 404),
    ],
)
def test_bad_ids_and_names(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_a_second_run_is_a_conflict_while_one_holds_the_lock(client: TestClient, data: Path) -> None:
    with run_lock(open_store(StoreSettings(path=data)), ttl_s=60):
        response = client.post("/api/v1/drift/runs")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "run_in_progress"
        assert "cropseg_drift_run_in_progress 1.0" in client.get("/metrics").text


def test_starting_a_run_needs_the_token_when_set(data: Path, profile_path: Path) -> None:
    app = create_app(settings_for(data, profile_path, engine="scipy", api_token=TOKEN), CollectorRegistry())
    with TestClient(app) as client:
        assert client.post("/api/v1/drift/runs").status_code == 401
        assert client.post("/api/v1/drift/runs", headers={"authorization": "Bearer wrong"}).status_code == 403
        started = client.post("/api/v1/drift/runs", headers={"authorization": f"Bearer {TOKEN}"})
        assert started.status_code == 202
        wait_for(client, started.json()["id"])
        assert client.get("/api/v1/drift/reports").status_code == 200  # reads are public


def test_metrics_export_the_newest_report(client: TestClient, data: Path, profile_path: Path) -> None:
    run(settings_for(data, profile_path, engine="scipy"))
    metrics = client.get("/metrics").text
    assert 'cropseg_drift_detected{check="overall"} 1.0' in metrics
    assert 'cropseg_drift_detected{check="image_properties"} 1.0' in metrics
    assert 'cropseg_drift_p_value{check="image_properties",feature="brightness"}' in metrics
    assert 'cropseg_drift_distance{check="grey_histogram",feature="all"}' in metrics
    assert "cropseg_drift_images_analysed 25.0" in metrics
    assert 'cropseg_drift_runs_total{outcome="drift"} 1.0' in metrics
    assert 'cropseg_drift_runs_total{outcome="error"} 0.0' in metrics
    assert "cropseg_drift_last_success_timestamp_seconds" in metrics
    assert "cropseg_drift_last_run_duration_seconds" in metrics
    assert "cropseg_drift_run_in_progress 0.0" in metrics


def test_info_and_probes(client: TestClient) -> None:
    info = client.get("/api/v1/info").json()
    assert (info["engine"], info["run_backend"]) == ("scipy", "local")
    assert info["reference"]["images"] == 200
    assert info["dependencies"]["alibi-detect"].startswith("0.13")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"


def test_serve_refuses_a_missing_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cropseg_drift.cli import main

    monkeypatch.setenv("DRIFT_REFERENCE_PATH", str(tmp_path / "none.npz"))
    assert main(["serve", "--port", "8999"]) == 2
    assert "reference profile" in capsys.readouterr().err
