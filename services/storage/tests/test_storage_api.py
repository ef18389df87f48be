"""The storage API with TestClient and a fake inference service (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cropseg_storage.main import create_app
from cropseg_storage.settings import StorageSettings
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from storage_testing import TOKEN, column_mask, encode, fake_inference, field_image, make_settings, routed

from cropseg_core.contracts import DriftReport, Header
from cropseg_core.imaging import decode_image
from cropseg_core.store import encode_json

DRIFT_REPORT = Path(__file__).parents[2] / "drift_monitor" / "tests" / "testdata" / "report-20261207.json"
"""A drift report as the drift monitor stored it (storage forwards it; it never reads drift's code)."""
IMAGE = encode(field_image())  # 40x30, vegetation in the first 20 columns
LABEL = encode(column_mask(40, 30, 30))  # the "truth": 30 columns


def upload(
    client: TestClient,
    data: bytes = IMAGE,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        "/api/v1/images",
        content=data,
        headers={"content-type": "image/png", **(headers or {})},
        params=params,
    )


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build an app with extra settings and its own outgoing transport."""
    clients: list[TestClient] = []

    def build(transport: httpx.MockTransport | None = None, **settings: object) -> TestClient:
        app = create_app(
            make_settings(tmp_path / f"data{len(clients)}", **settings),
            CollectorRegistry(),
            transport or routed(inference=fake_inference),
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


# Uploads


def test_upload_raw_then_duplicate(client: TestClient) -> None:
    first = upload(client, params={"filename": "field.png"})
    assert first.status_code == 201
    body = first.json()
    assert body["id"] == __import__("hashlib").sha256(IMAGE).hexdigest()
    assert (body["width"], body["height"], body["size"], body["source"]) == (40, 30, len(IMAGE), "upload")
    assert body["filename"] == "field.png"
    assert body["has_label"] is False
    assert first.headers["location"] == f"/api/v1/images/{body['id']}"
    again = upload(client)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert again.json()["created_at"] == body["created_at"]


def test_upload_multipart_with_label(client: TestClient) -> None:
    response = client.post(
        "/api/v1/images",
        files={"file": ("plot 7.png", IMAGE, "image/png"), "label": ("mask.png", LABEL, "image/png")},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "plot 7.png"
    assert response.json()["has_label"] is True


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", "image/png", 400, "empty_image"),
        (b"%PDF-1.4 not an image", "application/octet-stream", 415, "not_an_image"),
        (IMAGE[: len(IMAGE) // 2], "image/png", 400, "truncated_image"),
        (IMAGE, "text/plain", 415, "unsupported_media_type"),
    ],
    ids=["empty", "not-an-image", "truncated", "wrong-content-type"],
)
def test_bad_uploads_say_what_to_fix(
    client: TestClient, content: bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/api/v1/images", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert client.get("/api/v1/images").json()["items"] == []


def test_oversized_body_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(image_limits={"max_bytes": 1000, "max_pixels": 1000})
    response = upload(client, encode(field_image(200, 200)))
    assert response.status_code == 413
    assert "limit is 1000 bytes" in response.json()["error"]["message"]


def test_multipart_without_file_field(client: TestClient) -> None:
    response = client.post("/api/v1/images", files={"image": ("x.png", IMAGE, "image/png")})
    assert response.status_code == 400
    assert "'file' field" in response.json()["error"]["message"]


def test_label_of_the_wrong_size(client: TestClient) -> None:
    response = client.post(
        "/api/v1/images",
        files={
            "file": ("f.png", IMAGE, "image/png"),
            "label": ("m.png", encode(column_mask(10, 10, 5)), "image/png"),
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "label_size_mismatch"
    image_id = upload(client).json()["id"]
    response = client.put(f"/api/v1/images/{image_id}/label", content=encode(column_mask(41, 30, 5)),
                          headers={"content-type": "image/png"})  # fmt: skip
    assert response.status_code == 400
    assert "41x30 but the image is 40x30" in response.json()["error"]["message"]


# Reads


def test_unknown_and_malformed_ids(client: TestClient) -> None:
    unknown = "0" * 64
    for path in (
        "",
        "/metadata",
        "/thumbnail",
        "/label",
        "/mask",
        "/overlay",
        "/evaluation",
        "/segmentations",
    ):
        response = client.get(f"/api/v1/images/{unknown}{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "image_not_found"
        malformed = client.get(f"/api/v1/images/..%2F..%2Fetc{path}")
        assert malformed.status_code in (400, 404), path
    response = client.get("/api/v1/images/not-a-sha256")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_id"
    assert client.delete(f"/api/v1/images/{unknown}").status_code == 404
    assert client.post(f"/api/v1/images/{'z' * 64}/segmentation").status_code == 400


def test_image_bytes_are_cacheable_by_etag(client: TestClient) -> None:
    image_id = upload(client).json()["id"]
    response = client.get(f"/api/v1/images/{image_id}")
    assert response.content == IMAGE
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"] == f'"{image_id}"'
    assert "immutable" in response.headers["cache-control"]
    cached = client.get(f"/api/v1/images/{image_id}", headers={"if-none-match": f'"{image_id}"'})
    assert cached.status_code == 304
    assert cached.content == b""
    for validator in (f'W/"{image_id}"', "*", f'"other", W/"{image_id}"'):  # weak comparison, any (RFC 9110)
        assert (
            client.get(f"/api/v1/images/{image_id}", headers={"if-none-match": validator}).status_code == 304
        )
    assert client.get(f"/api/v1/images/{image_id}", headers={"if-none-match": '"other"'}).status_code == 200
    head = client.head(f"/api/v1/images/{image_id}")
    assert (head.status_code, head.content, head.headers["etag"]) == (200, b"", f'"{image_id}"')
    thumbnail = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert decode_image(thumbnail.content).width == 40  # never enlarged


def test_listing_pages_and_sample(client: TestClient) -> None:
    ids = [upload(client, encode(field_image(seed=n))).json()["id"] for n in range(5)]
    first = client.get("/api/v1/images", params={"limit": 3}).json()
    second = client.get("/api/v1/images", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [i["id"] for i in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert client.get("/api/v1/images", params={"source": "sample"}).json()["items"] == []
    assert client.get("/api/v1/images/sample").json()["items"] == [], "a sample is a labelled example"
    sample = client.get("/api/v1/images/sample", params={"limit": 2, "labelled": False}).json()["items"]
    assert len(sample) == 2
    assert {i["id"] for i in sample} <= set(ids)
    labelled_put = client.put(
        f"/api/v1/images/{ids[0]}/label", content=LABEL, headers={"content-type": "image/png"}
    )
    assert labelled_put.status_code in (200, 201, 204), labelled_put.text
    labelled = client.get("/api/v1/images/sample", params={"limit": 5}).json()["items"]
    assert [(i["id"], i["has_label"]) for i in labelled] == [(ids[0], True)]
    bad = client.get("/api/v1/images", params={"cursor": "nonsense"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_cursor")
    fullwidth = "１" * 13 + "-" + "a" * 64  # digits of another script match \d: still no cursor
    bad = client.get("/api/v1/images", params={"cursor": fullwidth})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_cursor")
    assert client.get("/api/v1/images", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/images", params={"source": "elsewhere"}).status_code == 422


# Segmentation and evaluation


def test_segment_then_mask_overlay_and_evaluation(client: TestClient) -> None:
    image_id = client.post(
        "/api/v1/images",
        files={"file": ("f.png", IMAGE, "image/png"), "label": ("m.png", LABEL, "image/png")},
    ).json()["id"]
    assert client.get(f"/api/v1/images/{image_id}/evaluation").json()["error"]["code"] == "no_segmentation"
    response = client.post(f"/api/v1/images/{image_id}/segmentation")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["vegetation_fraction"]) == (
        "cropseg-unet",
        "1.0.0",
        0.5,
    )
    assert body["latency_ms"] >= 0
    mask = client.get(f"/api/v1/images/{image_id}/mask")
    np.testing.assert_array_equal(decode_image(mask.content).pixels[..., 0], column_mask(40, 30, 20))
    assert mask.headers["x-model-version"] == "1.0.0"
    overlay = decode_image(client.get(body["links"]["overlay"]).content).pixels
    original = decode_image(IMAGE).pixels
    assert (overlay[:, 20:] == original[:, 20:]).all()  # soil untouched
    assert (overlay[:, :20, 0] > original[:, :20, 0]).all()  # vegetation tinted magenta
    evaluation = client.get(f"/api/v1/images/{image_id}/evaluation").json()
    assert evaluation["iou"] == pytest.approx(20 / 30)
    assert evaluation["pixel_accuracy"] == pytest.approx(30 / 40)
    assert evaluation["vegetation_fraction_label"] == pytest.approx(0.75)
    assert evaluation["pixels"] == 1200
    listed = client.get(f"/api/v1/images/{image_id}/segmentations").json()["items"]
    assert [s["model_version"] for s in listed] == ["1.0.0"]


def test_a_tiff_upload_links_to_a_png_picture_browsers_can_show(client: TestClient) -> None:
    """GeoTIFF is what drones export; no browser shows a TIFF, so the picture link renders a PNG."""
    pixels = decode_image(IMAGE).pixels
    tiff = upload(client, encode(pixels, "TIFF"), headers={"content-type": "image/tiff"}).json()
    assert tiff["links"]["picture"] == f"/api/v1/images/{tiff['id']}/picture?layout=rgb"
    picture = client.get(tiff["links"]["picture"])
    assert picture.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_image(picture.content).pixels, pixels)
    png = upload(client).json()  # a PNG in true colour is its own picture
    assert png["links"]["picture"] == f"/api/v1/images/{png['id']}"


@pytest.mark.parametrize(
    ("pixels", "warned"),
    [
        (np.repeat(field_image()[..., 1:2], 3, axis=2), True),  # a grey photo saved as RGB
        (field_image()[..., 1], True),  # a single-band file
        (field_image(), False),
    ],
    ids=["grey-rgb", "one-band", "colour"],
)
def test_a_grey_image_is_segmented_with_a_warning(
    client: TestClient, pixels: np.ndarray, warned: bool
) -> None:
    image_id = upload(client, encode(pixels)).json()["id"]
    answer = client.post(f"/api/v1/images/{image_id}/segmentation").json()
    listed = client.get(f"/api/v1/images/{image_id}/segmentations").json()["items"]
    for body in (answer, listed[0]):
        assert bool(body["warnings"]) is warned, body["warnings"]
        if warned:
            assert "single band" in body["warnings"][0]
            assert "cannot be read as true colour" in body["warnings"][0]


def test_the_overlay_colour_contrasts_with_the_layout(client: TestClient) -> None:
    """Magenta on true colour (green leaves); yellow on colour infrared, where leaves are purple."""
    for seed, layout, colour in ((1, "rgb", "#ff00ff"), (2, "cir", "#ffff00")):
        image_id = upload(client, encode(field_image(seed=seed)), params={"layout": layout}).json()["id"]
        body = client.post(f"/api/v1/images/{image_id}/segmentation").json()
        assert body["overlay_colour"] == colour
        overlay = decode_image(client.get(body["links"]["overlay"]).content).pixels.astype(int)
        picture = decode_image(client.get(f"/api/v1/images/{image_id}/picture").content).pixels.astype(int)
        tinted = overlay[:, :20] - picture[:, :20]  # the fake inference's vegetation: 20 columns
        rising = [channel for channel in range(3) if (tinted[..., channel] > 0).all()]
        assert rising == ([0, 2] if layout == "rgb" else [0, 1]), (layout, rising)


def test_the_mask_of_a_geotiff_upload_comes_back_georeferenced(client: TestClient) -> None:
    import rasterio  # GDAL, from the batch package's dependencies in the development install
    from rasterio.transform import from_origin

    pixels = decode_image(IMAGE).pixels
    place = {"crs": "EPSG:32632", "transform": from_origin(500_000, 5_300_000, 0.02, 0.02)}
    with rasterio.MemoryFile() as memory:
        with memory.open(driver="GTiff", width=40, height=30, count=3, dtype="uint8", **place) as out:
            out.write(np.moveaxis(pixels, -1, 0))
        geotiff = bytes(memory.read())
    image_id = upload(client, geotiff, headers={"content-type": "image/tiff"}).json()["id"]
    client.post(f"/api/v1/images/{image_id}/segmentation")
    response = client.get(f"/api/v1/images/{image_id}/mask", params={"format": "geotiff"})
    assert (response.headers["content-type"], response.headers["x-georeferenced"]) == ("image/tiff", "true")
    with rasterio.MemoryFile(response.content) as memory, memory.open() as mask:
        assert (mask.crs.to_epsg(), mask.transform) == (32632, place["transform"])
        np.testing.assert_array_equal(mask.read(1), column_mask(40, 30, 20))
    plain_id = upload(client).json()["id"]  # a PNG: a TIFF mask, but nowhere on the map
    client.post(f"/api/v1/images/{plain_id}/segmentation")
    plain = client.get(f"/api/v1/images/{plain_id}/mask", params={"format": "geotiff"})
    assert plain.headers["x-georeferenced"] == "false"
    assert client.get(f"/api/v1/images/{plain_id}/mask", params={"format": "jpeg"}).status_code == 422


def test_evaluation_without_label_is_a_conflict(client: TestClient) -> None:
    image_id = upload(client).json()["id"]
    client.post(f"/api/v1/images/{image_id}/segmentation")
    response = client.get(f"/api/v1/images/{image_id}/evaluation")
    assert response.status_code == 409
    assert "PUT /api/v1/images/" in response.json()["error"]["message"]
    put = client.put(f"/api/v1/images/{image_id}/label", content=LABEL, headers={"content-type": "image/png"})
    assert put.status_code == 204
    assert client.get(f"/api/v1/images/{image_id}/evaluation").json()["iou"] == pytest.approx(20 / 30)


def test_threshold_is_validated_and_passed_on(client: TestClient) -> None:
    image_id = upload(client).json()["id"]
    assert (
        client.post(f"/api/v1/images/{image_id}/segmentation", params={"threshold": 1.5}).status_code == 422
    )
    for threshold in (0.3, 0.0, 1.0):  # the inference service's rule: a probability from 0 to 1
        response = client.post(f"/api/v1/images/{image_id}/segmentation", params={"threshold": threshold})
        assert response.json()["threshold"] == threshold
    assert client.get(f"/api/v1/images/{image_id}/mask", params={"model_version": "../x"}).status_code == 422


def test_layout_is_stored_editable_and_sent_to_inference(make_client: Callable[..., TestClient]) -> None:
    seen: list[dict[str, str]] = []

    def inference(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return fake_inference(request)

    client = make_client(routed(inference=inference))
    assert client.get("/api/v1/layouts").json()[1]["name"] == "cir"
    stored = upload(client, params={"layout": "cir"}).json()
    assert stored["layout"] == "cir"
    assert stored["links"]["thumbnail"].endswith("?layout=cir")
    image_id = stored["id"]
    segmentation = client.post(f"/api/v1/images/{image_id}/segmentation", params={"gsd_mm": 2}).json()
    assert (seen[-1]["layout"], seen[-1]["gsd_mm"], segmentation["layout"]) == ("cir", "2.0", "cir")
    picture = client.get(f"/api/v1/images/{image_id}/picture")
    assert picture.status_code == 200
    assert client.get(f"/api/v1/images/{image_id}/picture", headers={"if-none-match": picture.headers["etag"]}
                      ).status_code == 304  # fmt: skip
    changed = client.put(f"/api/v1/images/{image_id}/layout", json={"layout": "rgb"})
    assert changed.json()["layout"] == "rgb"
    assert client.get(f"/api/v1/images/{image_id}/metadata").json()["layout"] == "rgb"
    client.post(f"/api/v1/images/{image_id}/segmentation")
    assert seen[-1]["layout"] == "rgb"
    multipart = client.post(
        "/api/v1/images", files={"file": ("b.png", encode(field_image(green_columns=5)), "image/png")},
        data={"layout": "red_nir"},
    )  # fmt: skip
    assert multipart.json()["layout"] == "red_nir"


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda c, i: upload(c, params={"layout": "ndvi"}), "use one of rgb, cir, rgbn, nir_red, red_nir"),
        (lambda c, i: upload(c, params={"layout": "rgbn"}), "needs 4 channels, but the image has 3"),
        (lambda c, i: c.put(f"/api/v1/images/{i}/layout", json={"layout": "rgbn"}), "needs 4 channels"),
        (lambda c, i: c.put(f"/api/v1/images/{i}/layout", json={"layout": "hsv"}), "unknown layout"),
        (lambda c, i: c.put(f"/api/v1/images/{i}/layout", content=b'{"layout": '), "Invalid JSON"),
        (lambda c, i: c.put(f"/api/v1/images/{i}/layout", json={"name": "cir"}), "layout: Field required"),
    ],
    ids=["upload-unknown", "upload-channels", "put-channels", "put-unknown", "put-not-json", "put-no-layout"],
)
def test_bad_layouts_are_422_and_change_nothing(
    client: TestClient, call: Callable[[TestClient, str], httpx.Response], fragment: str
) -> None:
    image_id = upload(client).json()["id"]
    response = call(client, image_id)
    assert response.status_code == 422
    assert fragment in response.json()["error"]["message"]
    assert client.get(f"/api/v1/images/{image_id}/metadata").json()["layout"] == "rgb"
    assert len(client.get("/api/v1/images").json()["items"]) == 1


def failing(kind: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if kind == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if kind == "no-connection":  # a killed pod's address answers nothing
            raise httpx.ConnectTimeout("timed out connecting", request=request)
        if kind == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if kind == "busy":
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "queue full"}},
                                  headers={"retry-after": "7"})  # fmt: skip
        if kind == "too-large":
            return httpx.Response(
                413, json={"error": {"code": "image_too_large", "message": "too many pixels"}}
            )
        if kind == "crash":
            return httpx.Response(500, text="Internal Server Error")
        return httpx.Response(200, content=b"\x89PNG...")  # no headers: a broken answer

    return handler


@pytest.mark.parametrize(
    ("kind", "status", "code", "outcome"),
    [
        ("refused", 503, "inference_unavailable", "unavailable"),
        ("no-connection", 503, "inference_unavailable", "unavailable"),
        ("busy", 503, "inference_unavailable", "unavailable"),
        ("timeout", 504, "inference_timeout", "timeout"),
        ("too-large", 413, "image_too_large", "rejected"),
        ("crash", 502, "inference_failed", "failed"),
        ("malformed", 502, "inference_failed", "failed"),
    ],
)
def test_inference_failures_become_clear_answers(
    make_client: Callable[..., TestClient], kind: str, status: int, code: str, outcome: str
) -> None:
    client = make_client(routed(inference=failing(kind)))
    image_id = upload(client).json()["id"]
    response = client.post(f"/api/v1/images/{image_id}/segmentation")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if kind == "busy":
        assert response.headers["retry-after"] == "7"
    if kind in ("refused", "no-connection"):
        assert response.headers["retry-after"] == "2"
        message = response.json()["error"]["message"]  # for people: what happened and what to do
        assert "inference service is not answering" in message
        assert "Status page" in message
        assert not [word for word in ("Error", "http", "127.0.0.1") if word in message], message
    metrics = client.get("/metrics").text
    assert f'cropseg_storage_inference_requests_total{{outcome="{outcome}"}} 1.0' in metrics
    assert client.get(f"/api/v1/images/{image_id}/segmentations").json()["items"] == []  # nothing stored


# Deletes, authentication, CORS


def test_delete(client: TestClient) -> None:
    image_id = upload(client).json()["id"]
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert client.get(f"/api/v1/images/{image_id}").status_code == 404
    assert client.get("/api/v1/images").json()["items"] == []


def test_writes_need_the_token_reads_do_not(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=TOKEN)
    missing = upload(client)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert upload(client, headers={"authorization": "Basic abc"}).status_code == 401
    wrong = upload(client, headers={"authorization": "Bearer wrong-token"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
    auth = {"authorization": f"Bearer {TOKEN}"}
    image_id = upload(client, headers=auth).json()["id"]
    assert client.get(f"/api/v1/images/{image_id}").status_code == 200  # reads are public
    assert client.post(f"/api/v1/images/{image_id}/segmentation").status_code == 401
    assert client.put(f"/api/v1/images/{image_id}/label", content=LABEL).status_code == 401
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 401
    assert client.put(f"/api/v1/images/{image_id}/layout", json={"layout": "cir"}).status_code == 401
    assert client.put(f"/api/v1/images/{image_id}/layout", content=b"junk", headers=auth).status_code == 422
    assert client.post(f"/api/v1/images/{image_id}/segmentation", headers=auth).status_code == 201
    assert client.delete(f"/api/v1/images/{image_id}", headers=auth).status_code == 204
    assert client.get("/api/v1/info").json()["authentication"] is True


def test_short_tokens_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        make_settings(Path("unused"), api_token="short")


def test_cors_allowlist(make_client: Callable[..., TestClient]) -> None:
    client = make_client(cors_origins=["https://fields.example"])
    allowed = client.options(
        "/api/v1/images",
        headers={"origin": "https://fields.example", "access-control-request-method": "POST"},
    )
    assert allowed.headers["access-control-allow-origin"] == "https://fields.example"
    other = client.get("/api/v1/info", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# Service endpoints


def test_info_health_and_readiness(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    info = client.get("/api/v1/info").json()
    assert info["service"] == "cropseg-storage"
    assert info["store"].startswith("filesystem ")
    assert info["dependencies"]["fastapi"] != "not installed"
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert {name: check["status"] for name, check in ready.json()["checks"].items()} == {
        "store": "ok",
        "inference": "ok",
    }
    assert 'cropseg_storage_dependency_up{dependency="inference"} 1.0' in client.get("/metrics").text


def test_storage_stays_ready_without_inference_and_reports_it_degraded(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(routed())  # nothing listens for inference
    down = client.get("/readyz")
    assert (down.status_code, down.json()["status"]) == (200, "degraded")
    assert down.json()["checks"]["store"]["status"] == "ok"
    assert down.json()["checks"]["inference"]["status"] == "degraded"
    assert down.json()["checks"]["inference"]["detail"].startswith("not ready at http://127.0.0.1:8001")
    assert 'cropseg_storage_dependency_up{dependency="inference"} 0.0' in client.get("/metrics").text
    assert upload(client).status_code == 201  # uploads and reads go on
    assert client.get("/api/v1/images").json()["items"]


@pytest.mark.slow
def test_a_hanging_inference_does_not_hold_up_the_readiness_probe(
    make_client: Callable[..., TestClient],
) -> None:
    async def hanging(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    client = make_client(httpx.MockTransport(hanging))
    started = time.perf_counter()
    answer = client.get("/readyz")
    assert time.perf_counter() - started < 1.0  # the kubelet's default probe timeout
    assert (answer.status_code, answer.json()["checks"]["inference"]["status"]) == (200, "degraded")


def test_an_unusable_store_makes_storage_unready(make_client: Callable[..., TestClient]) -> None:
    client = make_client()

    async def broken_store() -> str:
        return "data folder /data is not writable"

    client.app.state.check_store = broken_store  # type: ignore[attr-defined]
    answer = client.get("/readyz")
    assert (answer.status_code, answer.json()["status"]) == (503, "not ready")
    assert answer.json()["checks"]["store"] == {
        "status": "failed",
        "detail": "data folder /data is not writable",
    }


def test_metrics_count_uploads_and_stored_images(client: TestClient) -> None:
    upload(client)
    upload(client)
    upload(client, encode(field_image(seed=3)))
    metrics = client.get("/metrics").text
    assert 'cropseg_storage_uploads_total{result="created"} 2.0' in metrics
    assert 'cropseg_storage_uploads_total{result="duplicate"} 1.0' in metrics
    assert 'cropseg_storage_images{source="upload"} 2.0' in metrics
    assert "cropseg_storage_upload_size_bytes_count 3.0" in metrics
    assert "cropseg_storage_volume_free_bytes" in metrics
    assert 'http_requests_total{handler="/api/v1/images",method="POST",status="201"} 2.0' in metrics


def test_status_page_data(client: TestClient) -> None:
    asyncio.run(client.app.state.status_monitor.check_all())  # type: ignore[attr-defined]
    status = client.get("/api/v1/status").json()
    states = {s["name"]: s["state"] for s in status["services"]}
    assert states == {"storage": "up", "inference": "up", "drift-monitor": "down"}
    assert status["overall"] == "down"
    assert [i["service"] for i in status["incidents"]] == ["drift-monitor"]
    assert status["incidents"][0]["ended_at"] is None
    assert 'cropseg_service_up{service="drift-monitor"} 0.0' in client.get("/metrics").text


def test_drift_reports_are_forwarded(make_client: Callable[..., TestClient]) -> None:
    def drift(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/drift/reports"
        return httpx.Response(200, json={"items": [{"id": "r1"}], "limit": request.url.params["limit"]})

    client = make_client(routed(inference=fake_inference, drift=drift))
    response = client.get("/api/v1/drift/reports", params={"limit": 5})
    assert response.json() == {"items": [{"id": "r1"}], "limit": "5"}
    assert client.get("/api/v1/drift/reports/..%2F..%2Fmetrics").status_code in (400, 404)
    absent = make_client().get("/api/v1/drift/reports")
    assert absent.status_code == 503
    assert "STORAGE_DRIFT_URL" in absent.json()["error"]["message"]


def test_drift_reports_are_forwarded_as_they_are_with_their_schema_in_the_docs(
    make_client: Callable[..., TestClient],
) -> None:
    report = json.loads(DRIFT_REPORT.read_text())
    stored = encode_json(report)

    def drift(request: httpx.Request) -> httpx.Response:
        assert request.url.path in ("/api/v1/drift/reports/latest", f"/api/v1/drift/reports/{report['id']}")
        return httpx.Response(200, content=stored, headers={"content-type": "application/json"})

    client = make_client(routed(inference=fake_inference, drift=drift))
    for path in ("latest", report["id"]):
        served = client.get(f"/api/v1/drift/reports/{path}")
        assert served.content == stored  # bytes unchanged
        DriftReport.model_validate(served.json())
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/drift/reports/latest", "/api/v1/drift/reports/{report_id}"):
        answer = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/DriftReport"}, path


def test_an_inference_answer_without_a_contract_header_is_a_bad_gateway(
    make_client: Callable[..., TestClient],
) -> None:
    def without_tiles(request: httpx.Request) -> httpx.Response:
        answer = fake_inference(request)
        if request.url.path == "/api/v1/segment":
            del answer.headers[Header.TILES]
        return answer

    client = make_client(routed(inference=without_tiles))
    image_id = upload(client).json()["id"]
    response = client.post(f"/api/v1/images/{image_id}/segmentation")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "inference_failed"
    assert "no X-Tiles header" in response.json()["error"]["message"]


def test_drift_writes_are_forwarded_with_the_callers_token(make_client: Callable[..., TestClient]) -> None:
    seen: list[tuple[str, str, str | None, bytes]] = []

    def drift(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/"):  # not the status page's health checks
            token = request.headers.get("authorization")
            seen.append((request.method, request.url.path, token, request.content))
        return httpx.Response(200, json={"kind": "chosen"})

    client = make_client(routed(inference=fake_inference, drift=drift))
    token = {"authorization": "Bearer abc"}
    assert client.put("/api/v1/drift/reference/rgb", json={"report_id": "r"}, headers=token).json() == {
        "kind": "chosen"
    }
    client.delete("/api/v1/drift/reference/cir", headers=token)
    client.post("/api/v1/drift/runs")
    assert seen == [
        ("PUT", "/api/v1/drift/reference/rgb", "Bearer abc", b'{"report_id":"r"}'),
        ("DELETE", "/api/v1/drift/reference/cir", "Bearer abc", b""),
        ("POST", "/api/v1/drift/runs", None, b""),
    ]
    too_large = client.put("/api/v1/drift/reference/rgb", content=b"{" + b" " * 5000 + b"}")
    assert too_large.status_code == 413
    assert len(seen) == 3  # refused here, never forwarded


def test_web_ui_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "<title>cropseg" in page.text
    policy = page.headers["content-security-policy"]  # the UI's own scripts, styles and images only
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    for asset in ("/static/app.js", "/static/style.css"):
        served = client.get(asset)
        assert served.status_code == 200
        assert served.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/missing.js").status_code == 404
    assert client.head("/").status_code == 200


def test_a_configured_basemap_is_the_one_other_host_the_page_may_load_images_from(
    make_client: Callable[..., TestClient],
) -> None:
    from cropseg_storage.settings import FieldUploadSettings

    tiles = "https://tiles.example.org:8443/osm/{z}/{x}/{y}.png"
    client = make_client(fields=FieldUploadSettings(map_tiles=tiles, map_attribution="© OSM"))
    policy = client.get("/").headers["content-security-policy"]
    assert "img-src 'self' https://tiles.example.org:8443 data: blob:" in policy
    info = client.get("/api/v1/info").json()
    assert (info["map_tiles"], info["map_attribution"]) == (tiles, "© OSM")
    for bad, why in (
        ("ftp://host/{z}/{x}/{y}", "http(s) URL"),
        ("https://host/tiles.png", "{z}, {x} and {y}"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            FieldUploadSettings(map_tiles=bad)


def test_without_a_basemap_the_page_loads_nothing_from_elsewhere(client: TestClient) -> None:
    assert "img-src 'self' data: blob:" in client.get("/").headers["content-security-policy"]
    assert client.get("/api/v1/info").json()["map_tiles"] is None


@pytest.mark.slow
def test_samples_seeded_on_first_start(make_client: Callable[..., TestClient]) -> None:
    from storage_testing import REPO, SAMPLES

    client = make_client(samples_path=SAMPLES, real_photos_path=REPO / "model" / "data" / "real")
    items = client.get("/api/v1/images/sample", params={"limit": 50, "source": "sample"}).json()["items"]
    assert len(items) == 16
    assert all(item["has_label"] for item in items)
    # Beside the 12 generated tiles, 2 real photos of each CC BY-SA set, credited.
    real = sorted((item["filename"], item["credit"]) for item in items if item["credit"])
    assert [name for name, _ in real] == [
        "ews-FPWW0220032_RGB1_20180112_121036_6.jpg",
        "ews-FPWW0220032_RGB1_20180424_112157_6.jpg",
        "peanut-0013.jpg",
        "peanut-0091.jpg",
    ]
    assert "ETH Zurich" in real[0][1]
    assert "Tran" in real[2][1]
    assert all("CC BY-SA 4.0" in credit for _, credit in real)


@pytest.mark.slow
def test_the_service_runs_on_s3(make_client: Callable[..., TestClient], s3_settings: object) -> None:
    client = make_client(store={"backend": "s3", "s3": s3_settings})
    assert client.get("/api/v1/info").json()["store"].startswith("s3 http://127.0.0.1:")
    image_id = client.post(
        "/api/v1/images",
        files={"file": ("f.png", IMAGE, "image/png"), "label": ("m.png", LABEL, "image/png")},
    ).json()["id"]
    assert upload(client).status_code == 200
    assert client.get(f"/api/v1/images/{image_id}").content == IMAGE
    assert client.post(f"/api/v1/images/{image_id}/segmentation").status_code == 201
    assert client.get(f"/api/v1/images/{image_id}/evaluation").json()["iou"] == pytest.approx(20 / 30)
    assert [i["id"] for i in client.get("/api/v1/images").json()["items"]] == [image_id]
    assert client.get("/readyz").json()["checks"]["store"]["status"] == "ok"
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert client.get("/api/v1/images").json()["items"] == []


def test_an_empty_samples_or_real_photos_path_skips_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_SAMPLES_PATH", "")
    monkeypatch.setenv("STORAGE_REAL_PHOTOS_PATH", "")
    settings = StorageSettings()
    assert (settings.samples_path, settings.real_photos_path) == (None, None)  # not the current folder
