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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_starting_a_run_needs_the_token_when_set(data: Path, profile_path: Path) -> None:
    app = create_app(settings_for(data, profile_path, engine="scipy", api_token=TOKEN), CollectorRegistry())
    with TestClient(app) as client:
        assert client.post("/api/v1/drift/runs").status_code == 401
        assert client.post("/api/v1/drift/runs", headers={"authorization": "Bearer wrong"}).status_code == 403
        started = client.post("/api/v1/drift/runs", headers={"authorization": f"Bearer {TOKEN}"})
        assert started.status_code == 202
        wait_for(client, started.json()["id"])
        assert client.get("/api/v1/drift/reports").status_code == 200  # reads are public


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_user_chooses_the_reference_and_can_go_back(data: Path, profile_path: Path) -> None:
    """The 25 over-exposed uploads drift from the training images; chosen as the reference, the
    next run compares with them (no drift) and says so; DELETE returns to the training images."""
    app = create_app(settings_for(data, profile_path, engine="scipy", api_token=TOKEN), CollectorRegistry())
    auth = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        before = run(settings_for(data, profile_path, engine="scipy"))
        assert before.status == "drift"
        assert [r["kind"] for r in client.get("/api/v1/drift/reference").json()] == ["training"]
        choice = {"report_id": before.report_id}
        assert client.put("/api/v1/drift/reference/rgb", json=choice).status_code == 401
        chosen = client.put("/api/v1/drift/reference/rgb", json=choice, headers=auth)
        assert chosen.status_code == 200, chosen.text
        assert (chosen.json()["kind"], chosen.json()["images"]) == ("chosen", 25)
        assert f"the 25 images of report {before.report_id}" in chosen.json()["description"]

        after = run(settings_for(data, profile_path, engine="scipy"))
        assert after.report is not None
        assert after.message == (
            "Recent rgb uploads look like the uploads chosen as the reference (5 checks agree)."
        )
        assert after.report["reference"]["kind"] == "chosen"
        assert after.report["reference"]["text"].startswith("uploads chosen as the reference on ")

        back = client.delete("/api/v1/drift/reference/rgb", headers=auth)
        assert back.json()["kind"] == "training"
        assert run(settings_for(data, profile_path, engine="scipy")).status == "drift"

        by_period = client.put("/api/v1/drift/reference/rgb", json={"first": 20}, headers=auth).json()
        assert by_period["description"].endswith("the first 20 uploads")


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, "give report_id, or since / until / first"),
        ({"report_id": "20260101T000000000000Z", "first": 5}, 422, "not both"),
        ({"report_id": "20260101T000000000000Z"}, 404, "no drift report 20260101T000000000000Z"),
        ({"report_id": "../x"}, 400, "ids look like"),
        ({"since": "2030-01-01T00:00:00"}, 409, "0 segmented rgb images"),
        ({"since": "2030-01-02", "until": "2030-01-01"}, 400, "must be before until"),
        ({"report_id": "x" * 5000}, 413, "the limit is 4096 bytes"),
    ],
)
def test_a_reference_choice_that_cannot_work_says_what_to_fix(
    client: TestClient, body: dict[str, object], status: int, says: str
) -> None:
    answer = client.put("/api/v1/drift/reference/rgb", json=body)
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert client.put("/api/v1/drift/reference/ndvi", json={"first": 5}).status_code == 400
    assert "Invalid JSON" in client.put("/api/v1/drift/reference/rgb", content=b"{first: 5}").text
