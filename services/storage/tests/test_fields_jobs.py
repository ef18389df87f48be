"""Fields' segmentations over HTTP: asked for once however many ask at once, cancelled, followed,
their results streamed; the gauges read from the fields' job.json."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cropseg_storage.field_jobs import Backend, LaunchError, LocalLauncher, request_segmentation
from fastapi.testclient import TestClient
from storage_testing import TOKEN
from test_fields_upload import geotiff, make_client, metric

from cropseg_core.errors import ConflictError
from cropseg_core.fields import (
    RESULTS,
    STALE_AFTER,
    CoverRequest,
    FieldCatalogue,
    FieldJob,
    FieldRecord,
    job_key,
    result_key,
)

FIELDS = "/api/v1/fields"
MIB = 1024 * 1024


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data: Path) -> Iterator[TestClient]:
    with make_client(data) as test_client:
        yield test_client


def catalogue(client: TestClient) -> FieldCatalogue:
    fields = client.app.state.fields  # type: ignore[attr-defined]
    assert isinstance(fields, FieldCatalogue)
    return fields


def add_field(client: TestClient, tmp_path: Path, name: str = "North field", number: int = 1) -> str:
    """A field stored as the upload's last chunk stores one (its record written last)."""
    field_id = f"{number:032x}"
    source = tmp_path / f"{field_id}.tif"
    geotiff(source)
    record = FieldRecord(
        id=field_id, name=name, filename="north.tif", size=source.stat().st_size, width=96, height=64,
        bands=3, alpha=False, layout="rgb", crs="EPSG:32632", pixel_size=(0.05, 0.05),
        bounds=(500_000.0, 5_299_996.8, 500_004.8, 5_300_000.0), created=datetime.now(UTC),
    )  # fmt: skip
    catalogue(client).add(record, source)
    return field_id


def stored_job(client: TestClient, field_id: str) -> FieldJob:
    job = catalogue(client).job(field_id)
    assert job is not None
    return job


def put_job(client: TestClient, field_id: str, status: str, **facts: Any) -> FieldJob:
    """What the worker writes: its claim, its progress, its end."""
    job = FieldJob.model_validate(
        {"status": status, "requested": datetime.now(UTC), "backend": "local", **facts}
    )
    catalogue(client).put_job(field_id, job)
    return job


def test_a_field_has_no_job_and_no_results_until_segmented(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    field = client.get(f"{FIELDS}/{field_id}").json()
    assert field["job"] is None
    url = f"{FIELDS}/{field_id}"
    links = {"self": url, "segment": f"{url}/segment", "cancel": f"{url}/cancel", "results": {}}
    assert field["links"] == links
    assert [item["id"] for item in client.get(FIELDS).json()["items"]] == [field_id]


def test_segment_queues_the_job_with_its_cover(client: TestClient, data: Path, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    answer = client.post(f"{FIELDS}/{field_id}/segment", json={"cell_m": 20, "zones": 5})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert (job["status"], job["backend"], job["job"], job["percent"], job["cancelling"]) == (
        "queued", "local", None, 0.0, False,
    )  # fmt: skip
    assert job["cover"] == {"cell_m": 20.0, "zones": 5, "zone_method": "jenks"}
    assert (stored_job(client, field_id).status, stored_job(client, field_id).cover.cell_m) == ("queued", 20)
    assert catalogue(client).queued() == [field_id]  # what the local worker polls for
    assert client.get(f"{FIELDS}/{field_id}").json()["job"]["status"] == "queued"
    assert metric(client, "cropseg_storage_field_segmentations_requested_total") == 1


def test_segment_without_a_body_takes_the_default_cover(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    answer = client.post(f"{FIELDS}/{field_id}/segment")
    assert answer.status_code == 202, answer.text
    assert answer.json()["cover"] == CoverRequest().model_dump()


@pytest.mark.parametrize(
    ("status", "facts"),
    [
        ("queued", {}),
        ("segmenting", {"started": datetime.now(UTC), "updated": datetime.now(UTC), "windows_done": 3,
                        "windows_total": 12}),
    ],
    ids=["queued", "segmenting"],
)  # fmt: skip
def test_segment_while_a_job_is_active_is_409_job_active(
    client: TestClient, tmp_path: Path, status: str, facts: dict[str, Any]
) -> None:
    field_id = add_field(client, tmp_path)
    before = put_job(client, field_id, status, **facts)
    answer = client.post(f"{FIELDS}/{field_id}/segment", json={"zones": 4})
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "job_active"
    assert status in error["message"]
    assert "/cancel" in error["message"]
    assert catalogue(client).job(field_id) == before
    assert metric(client, "cropseg_storage_field_segmentations_requested_total") == 0


@pytest.mark.parametrize("status", ["done", "failed", "cancelled", "stale"])
def test_segment_again_after_a_job_ended(client: TestClient, tmp_path: Path, status: str) -> None:
    """A worker silent for longer than STALE_AFTER reads as failed: asking again resumes it."""
    field_id = add_field(client, tmp_path)
    if status == "stale":
        silent_since = datetime.now(UTC) - STALE_AFTER - timedelta(minutes=1)
        put_job(client, field_id, "segmenting", started=silent_since, updated=silent_since)
    else:
        put_job(client, field_id, status, requested=datetime.now(UTC) - timedelta(hours=1))
    catalogue(client).ask_cancel(field_id)  # a cancel of the earlier job left behind
    answer = client.post(f"{FIELDS}/{field_id}/segment")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued"
    assert not catalogue(client).cancel_asked(field_id)  # it must not stop the new job
    assert client.post(f"{FIELDS}/{field_id}/segment").status_code == 409


def test_sixteen_asks_at_once_queue_exactly_one(client: TestClient, tmp_path: Path) -> None:
    field_ids = [add_field(client, tmp_path, number=n) for n in range(1, 5)]
    for field_id in field_ids:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(client.post, [f"{FIELDS}/{field_id}/segment"] * 16))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [202] + [409] * 15, statuses
        assert {answer.json()["error"]["code"] for answer in answers if answer.status_code == 409} == {
            "job_active"
        }
    assert metric(client, "cropseg_storage_field_segmentations_requested_total") == len(field_ids)


def test_asks_released_together_past_the_status_check_queue_once(client: TestClient, tmp_path: Path) -> None:
    """16 threads read "no job" together (a barrier holds them until all have read it): the
    store's create-only claim lets one through, whatever the others read."""
    fields = catalogue(client)
    field_id = add_field(client, tmp_path)
    barrier = threading.Barrier(16)

    class Gate(FieldCatalogue):
        def job(self, field_id: str) -> FieldJob | None:
            job = super().job(field_id)
            barrier.wait(timeout=10)
            return job

    gated = Gate(fields.store)

    def ask(_: int) -> str:
        try:
            request_segmentation(gated, LocalLauncher(), field_id, CoverRequest())
        except ConflictError as e:
            return str(e)
        return "queued"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(ask, range(16)))
    assert outcomes.count("queued") == 1
    assert all("by another request at this moment" in outcome for outcome in outcomes if outcome != "queued")
    assert fields.queued() == [field_id]


def test_cancel_of_a_queued_job_cancels_it_at_once(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    client.post(f"{FIELDS}/{field_id}/segment")
    answer = client.post(f"{FIELDS}/{field_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["cancelling"]) == ("cancelled", False)
    assert answer.json()["finished"] is not None
    assert stored_job(client, field_id).status == "cancelled"
    assert catalogue(client).queued() == []
    assert catalogue(client).cancel_asked(field_id)  # a worker claiming it this moment stops at once
    again = client.post(f"{FIELDS}/{field_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "no_active_job"
    assert "is cancelled" in again.json()["error"]["message"]


def test_cancel_of_a_running_job_asks_the_worker_to_stop(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    now = datetime.now(UTC)
    put_job(client, field_id, "segmenting", started=now, updated=now, windows_done=5, windows_total=20)
    answer = client.post(f"{FIELDS}/{field_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["cancelling"], answer.json()["percent"]) == (
        "segmenting", True, 25.0,
    )  # fmt: skip
    assert catalogue(client).cancel_asked(field_id)
    assert stored_job(client, field_id).status == "segmenting"  # the worker writes cancelled
    job = client.get(f"{FIELDS}/{field_id}").json()["job"]
    assert (job["status"], job["cancelling"], job["windows_done"]) == ("segmenting", True, 5)


def test_cancel_with_nothing_running_is_409(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    answer = client.post(f"{FIELDS}/{field_id}/cancel")
    assert answer.status_code == 409
    assert answer.json()["error"] == {
        "code": "no_active_job",
        "message": f"field {field_id} was never segmented: there is no segmentation to cancel",
    }
    put_job(client, field_id, "done")
    assert "is done" in client.post(f"{FIELDS}/{field_id}/cancel").json()["error"]["message"]


@pytest.mark.parametrize("action", ["segment", "cancel"])
@pytest.mark.parametrize("field_id", ["0" * 32, "not-an-id"], ids=["unknown", "malformed"])
def test_a_field_that_does_not_exist_is_404(client: TestClient, action: str, field_id: str) -> None:
    answer = client.post(f"{FIELDS}/{field_id}/{action}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "field_not_found"
    assert client.get(f"{FIELDS}/{field_id}").status_code == 404
    assert client.get(f"{FIELDS}/{field_id}/results/mask.tif").status_code == 404


def test_a_half_uploaded_folder_is_not_a_field(client: TestClient, tmp_path: Path) -> None:
    """A folder without field.json (an upload that failed half-way) cannot be segmented."""
    field_id = add_field(client, tmp_path)
    catalogue(client).store.delete(f"fields/{field_id}/field.json")
    assert client.post(f"{FIELDS}/{field_id}/segment").status_code == 404
    assert client.get(FIELDS).json()["items"] == []


@pytest.mark.parametrize(
    ("cover", "where"),
    [({"zones": 1}, "zones"), ({"cell_m": 0}, "cell_m"), ({"zone_method": "kmeans"}, "zone_method")],
    ids=["one-zone", "zero-cell", "unknown-method"],
)
def test_a_bad_cover_is_422_naming_it(
    client: TestClient, tmp_path: Path, cover: dict[str, Any], where: str
) -> None:
    field_id = add_field(client, tmp_path)
    answer = client.post(f"{FIELDS}/{field_id}/segment", json=cover)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"
    assert where in answer.json()["error"]["message"]
    assert catalogue(client).job(field_id) is None


def test_writes_need_the_token_and_reads_do_not(data: Path, tmp_path: Path) -> None:
    with make_client(data, api_token=TOKEN) as client:
        field_id = add_field(client, tmp_path)
        assert client.post(f"{FIELDS}/{field_id}/segment").status_code == 401
        assert client.post(f"{FIELDS}/{field_id}/cancel").status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post(f"{FIELDS}/{field_id}/segment", headers=auth).status_code == 202
        assert client.post(f"{FIELDS}/{field_id}/cancel", headers=auth).status_code == 202
        assert client.get(f"{FIELDS}/{field_id}").status_code == 200


def store_results(client: TestClient, field_id: str, names: list[str]) -> dict[str, bytes]:
    """What the worker uploads, the mask larger than a download chunk."""
    rng = np.random.default_rng(1)
    made = {}
    for name in names:
        size = 3 * MIB + 17 if name == "mask.tif" else 1000
        made[name] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        catalogue(client).store.put(result_key(field_id, name), made[name])
    return made


def test_results_are_linked_once_they_exist(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    put_job(client, field_id, "done", windows_done=4, windows_total=4)
    store_results(client, field_id, ["mask.tif", "map.png", "report.json"])
    field = client.get(f"{FIELDS}/{field_id}").json()
    assert field["job"]["percent"] == 100.0
    url = f"{FIELDS}/{field_id}/results"
    assert field["links"]["results"] == {
        "mask.tif": f"{url}/mask.tif", "map.png": f"{url}/map.png", "report.json": f"{url}/report.json",
    }  # fmt: skip
    listed = client.get(FIELDS).json()["items"][0]
    assert listed["links"] == field["links"]
    assert listed["job"] == field["job"]


@pytest.mark.parametrize(
    ("name", "disposition"),
    [("mask.tif", "attachment"), ("map.png", "inline"), ("cover.gpkg", "attachment")],
)
def test_a_result_streams_byte_for_byte_with_its_type_and_name(
    client: TestClient, tmp_path: Path, name: str, disposition: str
) -> None:
    field_id = add_field(client, tmp_path, name="Feld Süd")
    put_job(client, field_id, "done")
    made = store_results(client, field_id, [name])
    with client.stream("GET", f"{FIELDS}/{field_id}/results/{name}") as answer:
        assert answer.status_code == 200
        parts = list(answer.iter_raw())
    body = b"".join(parts)
    assert body == made[name]
    assert answer.headers["content-length"] == str(len(made[name]))
    assert answer.headers["content-type"].split(";")[0] == RESULTS[name][0]
    assert answer.headers["content-disposition"] == (
        f"{disposition}; filename=\"Feld S_d.{name}\"; filename*=UTF-8''Feld%20S%C3%BCd.{name}"
    )
    head = client.head(f"{FIELDS}/{field_id}/results/{name}")
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(made[name])))
    assert head.content == b""


def test_a_name_with_quotes_is_kept_out_of_the_plain_filename(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path, name='a "b" \\ c')
    put_job(client, field_id, "done")
    store_results(client, field_id, ["cover.csv"])
    answer = client.get(f"{FIELDS}/{field_id}/results/cover.csv")
    assert answer.headers["content-disposition"].startswith('attachment; filename="a _b_ _ c.cover.csv";')


@pytest.mark.parametrize(
    ("status", "facts", "says"),
    [
        (None, {}, "is not segmented yet: POST /api/v1/fields/"),
        ("queued", {}, "is queued: mask.tif is there once it is done"),
        ("segmenting", {"windows_done": 1, "windows_total": 4}, "is segmenting (25 %)"),
        ("failed", {"error": "the GeoTIFF is damaged"}, "failed (the GeoTIFF is damaged): POST"),
        ("cancelled", {}, "was cancelled: POST"),
    ],
    ids=["never", "queued", "segmenting", "failed", "cancelled"],
)  # fmt: skip
def test_a_result_not_made_yet_is_404_saying_what_to_do(
    client: TestClient, tmp_path: Path, status: str | None, facts: dict[str, Any], says: str
) -> None:
    field_id = add_field(client, tmp_path)
    if status is not None:
        now = datetime.now(UTC)
        put_job(client, field_id, status, started=now, updated=now, **facts)
    answer = client.get(f"{FIELDS}/{field_id}/results/mask.tif")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "result_not_found"
    assert says in answer.json()["error"]["message"]


def test_an_unknown_result_is_404_naming_the_results(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    answer = client.get(f"{FIELDS}/{field_id}/results/mask.png")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "result_not_found"
    assert all(name in answer.json()["error"]["message"] for name in RESULTS)


def test_delete_of_a_segmenting_field_leaves_nothing(client: TestClient, data: Path, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    now = datetime.now(UTC)
    put_job(client, field_id, "segmenting", started=now, updated=now)
    store_results(client, field_id, ["preview.png"])
    assert client.delete(f"{FIELDS}/{field_id}").status_code == 204
    assert client.get(f"{FIELDS}/{field_id}").status_code == 404
    assert catalogue(client).store.list_keys(f"fields/{field_id}/") == []  # the worker stops: field gone
    assert client.get(FIELDS).json()["items"] == []


def test_delete_of_a_queued_field_leaves_nothing(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    client.post(f"{FIELDS}/{field_id}/segment")
    assert client.delete(f"{FIELDS}/{field_id}").status_code == 204
    assert catalogue(client).store.list_keys(f"fields/{field_id}/") == []
    assert catalogue(client).queued() == []


class FailingLauncher:
    """A cluster whose API refuses the Job."""

    @property
    def backend(self) -> Backend:
        return "kubernetes"

    def launch(self, field_id: str) -> str | None:
        raise LaunchError("jobs.batch is forbidden: ask an operator", retry_after_s=30)


class NamingLauncher(FailingLauncher):
    def launch(self, field_id: str) -> str | None:
        return f"cropseg-field-worker-{field_id[:12]}"


def test_a_launch_that_fails_is_503_and_the_job_reads_failed(client: TestClient, tmp_path: Path) -> None:
    field_id = add_field(client, tmp_path)
    client.app.state.field_launcher = FailingLauncher()  # type: ignore[attr-defined]
    answer = client.post(f"{FIELDS}/{field_id}/segment")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "launch_failed"
    assert answer.headers["retry-after"] == "30"
    job = client.get(f"{FIELDS}/{field_id}").json()["job"]
    assert (job["status"], job["backend"], job["error"]) == (
        "failed", "kubernetes", "jobs.batch is forbidden: ask an operator",
    )  # fmt: skip
    client.app.state.field_launcher = NamingLauncher()  # type: ignore[attr-defined]
    again = client.post(f"{FIELDS}/{field_id}/segment")
    assert again.status_code == 202, again.text
    assert again.json()["job"] == f"cropseg-field-worker-{field_id[:12]}"
    assert stored_job(client, field_id).job == again.json()["job"]


def gauges(client: TestClient) -> dict[str, float]:
    states = ("none", "queued", "segmenting", "done", "failed", "cancelled")
    values = {state: metric(client, f'cropseg_storage_fields{{segmentation="{state}"}}') for state in states}
    values["megapixels"] = metric(client, "cropseg_storage_field_segmented_megapixels")
    values["seconds"] = metric(client, "cropseg_storage_field_segmentation_seconds")
    return values


def test_the_gauges_count_fields_by_job_and_finished_throughput(client: TestClient, tmp_path: Path) -> None:
    collector = client.app.state.metrics.field_jobs  # type: ignore[attr-defined]
    collector.max_age_s = 0.0
    ids = [add_field(client, tmp_path, number=n) for n in range(1, 7)]
    start = datetime.now(UTC) - timedelta(minutes=30)
    put_job(client, ids[1], "queued")
    put_job(client, ids[2], "segmenting", started=datetime.now(UTC), updated=datetime.now(UTC))
    put_job(client, ids[3], "segmenting", started=start, updated=start)  # silent: reads failed
    put_job(client, ids[4], "done", started=start, finished=start + timedelta(seconds=2),
            windows_done=8, windows_total=8)  # fmt: skip
    put_job(client, ids[5], "done", started=start, finished=start + timedelta(seconds=1),
            windows_done=8, windows_total=8, resumed_from=6)  # a resumed run did a quarter # fmt: skip
    field_mp = 96 * 64 / 1e6
    assert gauges(client) == pytest.approx(
        {"none": 1, "queued": 1, "segmenting": 1, "done": 2, "failed": 1, "cancelled": 0,
         "megapixels": field_mp * 1.25, "seconds": 3.0}
    )  # fmt: skip


def test_the_gauges_list_the_store_at_most_every_15_seconds(client: TestClient, tmp_path: Path) -> None:
    collector = client.app.state.metrics.field_jobs  # type: ignore[attr-defined]
    assert collector.max_age_s == 15.0
    field_id = add_field(client, tmp_path)
    assert gauges(client)["none"] == 1
    client.post(f"{FIELDS}/{field_id}/segment")
    assert (gauges(client)["none"], gauges(client)["queued"]) == (1, 0)  # the last listing stands
    collector.max_age_s = 0.0
    assert (gauges(client)["none"], gauges(client)["queued"]) == (0, 1)


def test_a_damaged_job_record_leaves_the_field_out_of_the_gauges(client: TestClient, tmp_path: Path) -> None:
    client.app.state.metrics.field_jobs.max_age_s = 0.0  # type: ignore[attr-defined]
    good, damaged = add_field(client, tmp_path, number=1), add_field(client, tmp_path, number=2)
    put_job(client, good, "queued")
    catalogue(client).store.put(job_key(damaged), b'{"status": "exploded"}')
    assert (gauges(client)["queued"], sum(gauges(client)[s] for s in ("none", "failed"))) == (1, 0)


def test_the_routes_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    segment = paths["/api/v1/fields/{field_id}/segment"]["post"]
    assert segment["summary"] == "Segment a field"
    assert {"202", "401", "404", "409", "422", "503"} <= set(segment["responses"])
    assert "job_active" in segment["description"]
    cancel = paths["/api/v1/fields/{field_id}/cancel"]["post"]
    assert {"202", "409"} <= set(cancel["responses"])
    result = paths["/api/v1/fields/{field_id}/results/{name}"]["get"]
    assert set(result["responses"]["200"]["content"]) == {media for media, _ in RESULTS.values()}
    assert all(name in result["description"] for name in RESULTS)
    field = client.get("/openapi.json").json()["components"]["schemas"]["FieldOut"]
    assert {"job", "links"} <= set(field["properties"])
