"""Fields uploaded with tus 1.0.0: resumable, streamed to disk, checked, nothing half-written left."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from cropseg_storage.main import create_app
from cropseg_storage.settings import FieldUploadSettings
from cropseg_storage.tus import encode_metadata
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry
from rasterio.transform import from_origin
from storage_testing import TOKEN, fake_inference, make_settings, routed

from cropseg_core.web.limits import resident_bytes

UPLOADS = "/api/v1/fields/uploads"
TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024


def geotiff(path: Path, width: int = 96, height: int = 64, count: int = 3, **profile: Any) -> bytes:
    """A small tiled GeoTIFF in UTM 32N at 5 cm, with noise so that it does not compress away."""
    profile = {"tiled": True, "blockxsize": 32, "blockysize": 32, **profile}
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8", crs="EPSG:32632",
        transform=from_origin(500_000, 5_300_000, 0.05, 0.05), **profile,
    ) as dataset:  # fmt: skip
        if not profile.get("sparse_ok"):  # sparse: tiles never written, the file is tags alone
            dataset.write(np.random.default_rng(0).integers(0, 255, (count, height, width), dtype=np.uint8))
    return path.read_bytes()


def plain_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def create(client: TestClient, length: int, filename: str = "north field.tif", **metadata: str) -> Any:
    headers = {
        **TUS,
        "Upload-Length": str(length),
        "Upload-Metadata": encode_metadata({"filename": filename, **metadata}),
    }
    return client.post(UPLOADS, headers=headers)


def patch(client: TestClient, url: str, offset: int, data: bytes, **headers: str) -> Any:
    chunk_headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    return client.patch(url, content=data, headers={**chunk_headers, **headers})


def upload(client: TestClient, data: bytes, chunk: int = 4096, **metadata: str) -> tuple[str, Any]:
    """The whole file in chunks; the URL and the last answer."""
    created = create(client, len(data), **metadata)
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    for offset in range(0, len(data), chunk):
        answer = patch(client, url, offset, data[offset : offset + chunk])
        if answer.status_code != 204:
            break
    return url, answer


def staged(data: Path) -> list[str]:
    return sorted(path.name for path in (data / ".field-uploads").iterdir())


def stored_fields(data: Path) -> list[str]:
    folder = data / "fields"
    return (
        sorted(str(p.relative_to(data)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    )


def metric(client: TestClient, line: str) -> float:
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    raise AssertionError(f"no metric {line}")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def make_client(data: Path, **overrides: Any) -> TestClient:
    return TestClient(
        create_app(make_settings(data, **overrides), CollectorRegistry(), routed(inference=fake_inference))
    )


@pytest.fixture
def client(data: Path) -> Iterator[TestClient]:
    with make_client(data) as test_client:
        yield test_client


def test_options_tell_versions_extensions_and_limits(client: TestClient) -> None:
    answer = client.options(UPLOADS)
    assert answer.status_code == 204
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.headers["tus-extension"] == "creation,termination,expiration"
    assert answer.headers["tus-max-size"] == str(2 * 1024**3)
    assert answer.headers["x-max-chunk-size"] == str(32 * MIB)


def test_upload_in_chunks_stores_the_field_byte_for_byte(
    client: TestClient, data: Path, tmp_path: Path
) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    created = create(client, len(tiff), layout="rgb", name="North field")
    assert created.status_code == 201, created.text
    assert created.headers["tus-resumable"] == "1.0.0"
    assert "upload-expires" in created.headers
    url = created.headers["location"]
    offsets = []
    for offset in range(0, len(tiff), 5000):
        answer = patch(client, url, offset, tiff[offset : offset + 5000])
        assert answer.status_code == 204, answer.text
        offsets.append(int(answer.headers["upload-offset"]))
    assert offsets[-1] == len(tiff)
    assert len(offsets) > 2
    field_id = url.rsplit("/", 1)[1]
    assert (data / "fields" / field_id / "source.tif").read_bytes() == tiff
    assert staged(data) == []
    record = client.get(f"/api/v1/fields/{field_id}").json()
    assert {k: record[k] for k in ("name", "filename", "size", "width", "height", "bands", "alpha", "layout",
                                   "crs", "pixel_size", "bounds", "status")} == {
        "name": "North field", "filename": "north field.tif", "size": len(tiff), "width": 96, "height": 64,
        "bands": 3, "alpha": False, "layout": "rgb", "crs": "EPSG:32632", "pixel_size": [0.05, 0.05],
        "bounds": [500_000.0, 5_300_000.0 - 64 * 0.05, 500_000.0 + 96 * 0.05, 5_300_000.0],
        "status": "uploaded",
    }  # fmt: skip
    head = client.head(url, headers=TUS)  # a client resuming a finished upload sends nothing again
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(tiff))
    assert metric(client, 'cropseg_storage_field_uploads_total{result="completed"}') == 1
    assert metric(client, "cropseg_storage_field_upload_received_bytes_total") == len(tiff)


def test_fields_are_listed_newest_first_and_deleted_with_a_token(data: Path, tmp_path: Path) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with make_client(data, api_token=TOKEN) as client:
        client.headers.update(auth)
        first, _ = upload(client, tiff, name="first")
        _second, _ = upload(client, tiff, name="second")
        names = [field["name"] for field in client.get("/api/v1/fields").json()["items"]]
        assert names == ["second", "first"]
        field_id = first.rsplit("/", 1)[1]
        client.headers.pop("Authorization")
        assert client.delete(f"/api/v1/fields/{field_id}").status_code == 401
        assert client.delete(f"/api/v1/fields/{field_id}", headers=auth).status_code == 204
        assert client.get(f"/api/v1/fields/{field_id}").status_code == 404
        assert [field["name"] for field in client.get("/api/v1/fields").json()["items"]] == ["second"]
        assert not (data / "fields" / field_id).exists()


async def _dropped_patch(app: Any, url: str, offset: int, length: int, parts: list[bytes]) -> int:
    """A PATCH whose connection drops after ``parts``: the server sees them, then a disconnect."""
    messages = [{"type": "http.request", "body": part, "more_body": True} for part in parts]
    messages.append({"type": "http.disconnect"})
    answers: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
               "Content-Length": str(length)}  # fmt: skip
    scope = {
        "type": "http", "method": "PATCH", "path": url, "raw_path": url.encode(), "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "http_version": "1.1",
        "scheme": "http", "server": ("testserver", 80), "client": ("testclient", 5000), "root_path": "",
    }  # fmt: skip
    await app(scope, receive, send)
    return int(answers[0]["status"])


def test_a_dropped_connection_keeps_what_arrived_and_the_rest_resumes(
    client: TestClient, data: Path, tmp_path: Path
) -> None:
    tiff = geotiff(tmp_path / "in.tif", width=512, height=512)
    created = create(client, len(tiff))
    url = created.headers["location"]
    arrived = [tiff[:70_000], tiff[70_000:150_001]]
    assert client.portal is not None
    assert client.portal.call(_dropped_patch, client.app, url, 0, len(tiff), arrived) == 499
    head = client.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["upload-offset"] == "150001"
    assert head.headers["upload-length"] == str(len(tiff))
    answer = patch(client, url, 150_001, tiff[150_001:])
    assert answer.status_code == 204, answer.text
    assert (data / "fields" / url.rsplit("/", 1)[1] / "source.tif").read_bytes() == tiff


def test_a_chunk_at_the_wrong_offset_is_409_and_changes_nothing(client: TestClient, tmp_path: Path) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    url = create(client, len(tiff)).headers["location"]
    assert patch(client, url, 0, tiff[:1000]).status_code == 204
    answer = patch(client, url, 500, tiff[500:1500])
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "offset_mismatch"
    assert "1000" in answer.json()["error"]["message"]
    assert client.head(url, headers=TUS).headers["upload-offset"] == "1000"


@pytest.mark.parametrize(
    ("length", "filename", "metadata", "status", "code"),
    [
        (3 * MIB, "big.tif", {}, 413, "upload_too_large"),
        (5000, "photo.jpg", {}, 415, "not_a_tiff"),
        (5000, "field.TIFF", {"layout": "hyperspectral"}, 422, "unknown_layout"),
        (4, "tiny.tif", {}, 400, "bad_request"),
    ],
    ids=["over-the-limit", "not-a-tif-name", "unknown-layout", "too-small"],
)
def test_creation_refuses_what_can_never_be_a_field(
    data: Path, length: int, filename: str, metadata: dict[str, str], status: int, code: str
) -> None:
    with make_client(data, fields=FieldUploadSettings(max_bytes=2 * MIB)) as client:
        answer = create(client, length, filename, **metadata)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code
        assert answer.headers["tus-resumable"] == "1.0.0"
        assert staged(data) == []
        assert metric(client, 'cropseg_storage_field_uploads_total{result="rejected"}') == 1


def test_a_chunk_over_the_limit_is_413_asking_for_a_smaller_chunk_size(client: TestClient) -> None:
    url = create(client, 100 * MIB).headers["location"]
    answer = patch(client, url, 0, b"II*\0" + bytes(32 * MIB))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "chunk_too_large"
    assert "chunkSize" in answer.json()["error"]["message"]
    assert client.head(url, headers=TUS).headers["upload-offset"] == "0"


def test_a_chunk_past_the_upload_length_is_413(client: TestClient) -> None:
    url = create(client, 100).headers["location"]
    assert patch(client, url, 0, b"II*\0" + bytes(200)).status_code == 413


def test_not_a_tiff_is_415_after_the_first_chunk_and_nothing_stays(client: TestClient, data: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(20_000)
    url, answer = upload(client, png, filename="field.tif")
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "not_a_tiff"
    assert int(metric(client, "cropseg_storage_field_upload_received_bytes_total")) == 4096
    assert staged(data) == []
    assert stored_fields(data) == []
    assert client.head(url, headers=TUS).status_code == 404


def test_a_tiff_without_georeference_is_422_and_nothing_stays(client: TestClient, data: Path) -> None:
    _url, answer = upload(client, plain_tiff())
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "not_a_geotiff"
    assert "export it with its georeference" in answer.json()["error"]["message"]
    assert staged(data) == []
    assert stored_fields(data) == []
    assert client.get("/api/v1/fields").json()["items"] == []


@pytest.mark.parametrize(
    ("profile", "layout", "code"),
    [
        ({"count": 5}, "rgb", "unsupported_raster"),
        ({"count": 3, "dtype": "uint16"}, "rgb", "unsupported_raster"),
        ({"count": 3}, "rgbn", "unsupported_raster"),
    ],
    ids=["five-bands", "16-bit", "three-bands-for-rgbn"],
)
def test_unsupported_bands_are_422_and_nothing_stays(
    client: TestClient, data: Path, tmp_path: Path, profile: dict[str, Any], layout: str, code: str
) -> None:
    count, dtype = profile["count"], profile.get("dtype", "uint8")
    path = tmp_path / "in.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=40, height=30, count=count, dtype=dtype, crs="EPSG:32632",
        transform=from_origin(500_000, 5_300_000, 0.05, 0.05),
    ) as dataset:  # fmt: skip
        dataset.write(np.ones((count, 30, 40), dtype))
    _, answer = upload(client, path.read_bytes(), layout=layout)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == code
    assert staged(data) == []
    assert stored_fields(data) == []


@pytest.mark.parametrize(
    ("profile", "layout", "bands", "alpha", "crs"),
    [
        ({"count": 2}, "nir_red", 2, False, "EPSG:32632"),
        ({"count": 4, "photometric": "RGB", "alpha": "YES"}, "rgb", 4, True, "EPSG:32632"),
        ({"count": 3, "BIGTIFF": "YES"}, "cir", 3, False, "EPSG:32632"),
    ],
    ids=["two-band-red-nir", "rgba", "bigtiff"],
)
def test_layouts_pillow_cannot_decode_are_read_from_the_header(
    client: TestClient,
    tmp_path: Path,
    profile: dict[str, Any],
    layout: str,
    bands: int,
    alpha: bool,
    crs: str,
) -> None:
    count = profile.pop("count")
    tiff = geotiff(tmp_path / "in.tif", count=count, **profile)
    url, answer = upload(client, tiff, layout=layout)
    assert answer.status_code == 204, answer.text
    record = client.get(f"/api/v1/fields/{url.rsplit('/', 1)[1]}").json()
    assert (record["bands"], record["alpha"], record["layout"], record["crs"]) == (bands, alpha, layout, crs)


def test_a_raster_beyond_pillows_bomb_guard_is_accepted_without_decoding(
    client: TestClient, tmp_path: Path
) -> None:
    """30,000 x 30,000 (900 MP, beyond the decompression-bomb guard of Image.open): only tags are read."""
    tiff = geotiff(
        tmp_path / "in.tif", width=30_000, height=30_000, blockxsize=512, blockysize=512, sparse_ok=True
    )
    assert len(tiff) < 2 * MIB
    guard = Image.MAX_IMAGE_PIXELS
    assert guard is not None
    assert 2 * guard < 30_000 * 30_000
    url, answer = upload(client, tiff, chunk=MIB)
    assert answer.status_code == 204, answer.text
    record = client.get(f"/api/v1/fields/{url.rsplit('/', 1)[1]}").json()
    assert (record["width"], record["height"]) == (30_000, 30_000)
    assert guard == Image.MAX_IMAGE_PIXELS  # and stays on for everything else


def test_over_max_pixels_is_413_on_completion(data: Path, tmp_path: Path) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    with make_client(data, fields=FieldUploadSettings(max_pixels=96 * 64 - 1)) as client:
        _, answer = upload(client, tiff)
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "raster_too_large"
        assert staged(data) == []
        assert stored_fields(data) == []


def test_terminate_deletes_what_arrived(client: TestClient, data: Path, tmp_path: Path) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    url = create(client, len(tiff)).headers["location"]
    patch(client, url, 0, tiff[:3000])
    assert client.delete(url, headers=TUS).status_code == 204
    assert staged(data) == []
    assert client.head(url, headers=TUS).status_code == 404
    assert patch(client, url, 3000, tiff[3000:]).status_code == 404
    assert metric(client, 'cropseg_storage_field_uploads_total{result="terminated"}') == 1


def test_expired_uploads_are_swept(client: TestClient, data: Path, tmp_path: Path) -> None:
    tiff = geotiff(tmp_path / "in.tif")
    url = create(client, len(tiff)).headers["location"]
    patch(client, url, 0, tiff[:3000])
    staging = client.app.state.field_staging  # type: ignore[attr-defined]
    assert staging.sweep_expired(datetime.now(UTC) + timedelta(hours=23)) == 0
    assert staging.sweep_expired(datetime.now(UTC) + timedelta(hours=24, seconds=1)) == 1
    assert staged(data) == []
    assert client.head(url, headers=TUS).status_code == 404


def test_writes_need_the_token_when_one_is_configured(data: Path) -> None:
    with make_client(data, api_token=TOKEN) as client:
        answer = create(client, 5000)
        assert answer.status_code == 401
        assert answer.headers["tus-resumable"] == "1.0.0"
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        created = create(client, 5000)
        client.headers.pop("Authorization")
        assert created.status_code == 201
        url = created.headers["location"]
        assert patch(client, url, 0, b"II*\0").status_code == 401
        assert client.delete(url, headers=TUS).status_code == 401
        assert client.head(url, headers=TUS).status_code == 200  # reads are public


@pytest.mark.parametrize("version", ["0.2.2", None], ids=["other-version", "no-version"])
def test_another_tus_version_is_412(client: TestClient, version: str | None) -> None:
    headers = {"Upload-Length": "5000", "Upload-Metadata": encode_metadata({"filename": "a.tif"})}
    answer = client.post(UPLOADS, headers={**headers, **({"Tus-Resumable": version} if version else {})})
    assert answer.status_code == 412
    assert answer.json()["error"]["code"] == "unsupported_tus_version"
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.headers["tus-resumable"] == "1.0.0"


def test_a_chunk_needs_the_tus_content_type(client: TestClient) -> None:
    url = create(client, 5000).headers["location"]
    answer = patch(client, url, 0, b"II*\0", **{"Content-Type": "application/octet-stream"})
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "unsupported_chunk_type"


@pytest.mark.slow
def test_a_large_upload_is_streamed_not_held(client: TestClient, data: Path, tmp_path: Path) -> None:
    """128 MiB in 8 MiB chunks: the process's resident memory (client and server: the test runs
    both) grows far less than the file."""
    header = geotiff(tmp_path / "in.tif")
    size, chunk = 128 * MIB, 8 * MIB
    url = create(client, size).headers["location"]
    zeros = bytes(chunk)  # the test's own buffer, reused: the body the client sends
    baseline, peak = resident_bytes(), 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.wait(0.005):
            peak = max(peak, resident_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for offset in range(0, size, chunk):
            body = (header + zeros[len(header) :]) if offset == 0 else zeros
            answer = patch(client, url, offset, body)
            assert answer.status_code == 204, answer.text
    finally:
        sampling.set()
        sampler.join()
    growth = peak - baseline
    print(f"resident memory grew {growth / MIB:.1f} MiB for a {size / MIB:.0f} MiB upload")
    assert growth < size / 4
    assert (data / "fields" / url.rsplit("/", 1)[1] / "source.tif").stat().st_size == size
