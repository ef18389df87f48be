from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx2 as httpx
import numpy as np
import pytest
from cropseg_inference.encoding import rle_decode, rle_encode
from cropseg_inference.main import create_app
from fastapi.testclient import TestClient
from inference_testing import MODEL_VERSION, make_settings, png, wait_ready
from PIL import Image
from prometheus_client import CollectorRegistry

from cropseg_core.bands import from_model_bands, get_layout, to_model_bands
from cropseg_core.confidence import decode_counts
from cropseg_core.contracts import Header, SegmentationHeaders
from cropseg_core.model import LoadedModel

SEGMENT = "/api/v1/segment"
PNG = {"content-type": "image/png"}


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def expected_mask(pixels: np.ndarray, layout: str = "rgb", **scaling: float) -> np.ndarray:
    """The core pipeline run in process: what the service must answer."""
    model = LoadedModel.load(make_settings().model_path, warmup_runs=0)
    return model.run(pixels, get_layout(layout), **scaling).mask


def segment(client: TestClient, body: bytes, **params: object) -> httpx.Response:
    return client.post(SEGMENT, content=body, headers=PNG, params=params)


@pytest.mark.slow
def test_default_answer_is_the_mask_with_headers(
    client: TestClient, field_png: bytes, field_tile: np.ndarray
) -> None:
    response = client.post(SEGMENT, content=field_png, headers=PNG)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    mask = read_png(response.content)
    assert mask.shape == (360, 480)
    assert np.array_equal(mask, expected_mask(field_tile))
    headers = response.headers
    assert float(headers["x-vegetation-fraction"]) == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert (headers["x-image-width"], headers["x-image-height"]) == ("480", "360")
    assert (headers["x-model-name"], headers["x-model-version"]) == ("cropseg-unet", MODEL_VERSION)
    confidence = decode_counts(headers["x-confidence"])  # the pixels by probability, soil then plant
    assert confidence[1].sum() / confidence.sum() == pytest.approx((mask == 255).mean(), abs=1e-6)
    stages = [part.split(";")[0] for part in headers["server-timing"].split(", ")]
    assert stages == ["decode", "preprocess", "queue", "infer", "postprocess", "encode"]


def test_the_answer_headers_are_the_contract_storage_reads(client: TestClient, field_png: bytes) -> None:
    headers = segment(client, field_png, threshold=0.4, layout="rgb").headers
    answer = SegmentationHeaders.from_headers(headers)  # what storage's inference client does
    mask = read_png(segment(client, field_png, threshold=0.4).content)
    assert answer.vegetation_fraction == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert (answer.image_width, answer.image_height, answer.tiles) == (480, 360, 1)
    assert (answer.threshold, answer.layout, answer.working_scale) == (0.4, "rgb", 1.0)
    assert (answer.model_name, answer.model_version) == ("cropseg-unet", MODEL_VERSION)
    assert answer.confidence is not None
    assert int(answer.confidence.sum()) == 480 * 360
    for name, value in answer.to_headers().items():  # written back, every header reads the same
        assert headers[name] == value, name


def test_multipart_jpeg_and_octet_stream_are_accepted(client: TestClient, field_tile: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(field_tile).save(buffer, "JPEG", quality=95)
    multipart = client.post(SEGMENT, files={"file": ("tile.jpg", buffer.getvalue(), "image/jpeg")})
    raw = client.post(
        SEGMENT, content=buffer.getvalue(), headers={"content-type": "application/octet-stream"}
    )
    assert multipart.status_code == raw.status_code == 200
    assert multipart.content == raw.content


def test_threshold_changes_the_mask(client: TestClient, field_png: bytes) -> None:
    fractions = [
        float(segment(client, field_png, threshold=t).headers["x-vegetation-fraction"])
        for t in (0.05, 0.55, 0.95)
    ]
    assert fractions[0] > fractions[1] > fractions[2]


def test_overlay_is_rgb_of_the_input_size(client: TestClient, field_png: bytes) -> None:
    response = client.post(SEGMENT, params={"output": "overlay"}, content=field_png, headers=PNG)
    assert response.status_code == 200
    assert read_png(response.content).shape == (360, 480, 3)


def geotiff(pixels: np.ndarray) -> bytes:
    """``pixels`` as a GeoTIFF in UTM 32N at 2 cm/px, written by GDAL."""
    import rasterio  # GDAL, from the batch package's dependencies in the development install
    from rasterio.transform import from_origin

    place = {"crs": "EPSG:32632", "transform": from_origin(500_000, 5_300_000, 0.02, 0.02)}
    with rasterio.MemoryFile() as memory:
        with memory.open(driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=3,
                         dtype="uint8", **place) as out:  # fmt: skip
            out.write(np.moveaxis(pixels, -1, 0))
        return bytes(memory.read())


@pytest.mark.slow
def test_a_geotiff_gets_its_mask_back_georeferenced(client: TestClient, field_tile: np.ndarray) -> None:
    import rasterio

    response = client.post(SEGMENT, params={"output": "geotiff"}, content=geotiff(field_tile),
                           headers={"content-type": "image/tiff"})  # fmt: skip
    assert response.status_code == 200
    assert (response.headers["content-type"], response.headers["x-georeferenced"]) == ("image/tiff", "true")
    with rasterio.MemoryFile(response.content) as memory, memory.open() as mask:
        assert mask.crs.to_epsg() == 32632
        assert mask.transform.to_gdal() == (500_000, 0.02, 0, 5_300_000, 0, -0.02)
        assert np.array_equal(mask.read(1), expected_mask(field_tile))


@pytest.mark.slow
def test_a_tiff_without_georeference_gets_a_plain_tiff_mask_and_a_warning(
    client: TestClient, field_tile: np.ndarray
) -> None:
    plain = io.BytesIO()
    Image.fromarray(field_tile).save(plain, format="TIFF")
    response = client.post(SEGMENT, params={"output": "geotiff"}, content=plain.getvalue(),
                           headers={"content-type": "image/tiff"})  # fmt: skip
    assert response.status_code == 200
    assert response.headers["x-georeferenced"] == "false"
    assert "no GeoTIFF georeference" in response.headers["warning"]
    with Image.open(io.BytesIO(response.content)) as mask:
        assert not {33550, 33922, 34735} & set(mask.tag_v2)
        assert np.array_equal(np.asarray(mask), expected_mask(field_tile))


@pytest.mark.parametrize("encoding", ["png", "rle"])
def test_json_carries_the_same_mask(client: TestClient, field_png: bytes, encoding: str) -> None:
    mask = read_png(client.post(SEGMENT, content=field_png, headers=PNG).content)
    body = client.post(
        SEGMENT, params={"output": "json", "mask_encoding": encoding}, content=field_png, headers=PNG
    ).json()
    assert (body["width"], body["height"], body["tiles"]) == (480, 360, 1)
    assert body["model"] == {"name": "cropseg-unet", "version": MODEL_VERSION}
    assert body["vegetation_fraction"] == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert set(body["timings_ms"]) == {"decode", "preprocess", "queue", "infer", "postprocess"}
    assert sum(body["confidence"]["plant"]) / (480 * 360) == pytest.approx(
        body["vegetation_fraction"], abs=1e-6
    )
    if encoding == "png":
        decoded = read_png(base64.b64decode(body["mask"]["data"]))
    else:
        decoded = rle_decode(body["mask"]["counts"], *body["mask"]["size"])
    assert np.array_equal(decoded, mask)


def test_json_without_mask(client: TestClient, field_png: bytes) -> None:
    body = client.post(
        SEGMENT, params={"output": "json", "mask_encoding": "none"}, content=field_png, headers=PNG
    ).json()
    assert "mask" not in body


@pytest.mark.parametrize(
    "mask",
    [np.zeros((3, 4), np.uint8), np.full((3, 4), 255, np.uint8), np.eye(5, 7, dtype=np.uint8) * 255],
    ids=["empty", "full", "diagonal"],
)
def test_rle_round_trips(mask: np.ndarray) -> None:
    counts = rle_encode(mask)
    assert sum(counts) == mask.size
    assert np.array_equal(rle_decode(counts, *mask.shape), mask)


@pytest.mark.slow
def test_large_image_is_tiled_and_keeps_its_size(client: TestClient, field_tile: np.ndarray) -> None:
    big = np.tile(field_tile, (3, 3, 1))[:1000, :1300]
    response = client.post(
        SEGMENT, params={"output": "json", "mask_encoding": "none"}, content=png(big), headers=PNG
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["width"], body["height"], body["tiles"]) == (1300, 1000, 12)  # 3 x 4 tiles of 512
    assert body["working_scale"] == 1.0  # its leaves are as narrow as the tile's


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header that declares a huge image, followed by a little compressed data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def float_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.float32)).save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "headers", "params", "status", "code"),
    [
        (b"", PNG, {}, 400, "empty_image"),
        (b"this is not an image", PNG, {}, 415, "not_an_image"),
        ("TRUNCATED", PNG, {}, 400, "truncated_image"),
        ("FLOAT_TIFF", {"content-type": "image/tiff"}, {}, 415, "unsupported_mode"),
        (bomb_png(30000, 30000), PNG, {}, 413, "image_too_large"),
        ("TILE", {"content-type": "text/plain"}, {}, 415, "unsupported_media_type"),
        ("TILE", {}, {}, 415, "unsupported_media_type"),
        ("TILE", PNG, {"threshold": "1.5"}, 422, "invalid_request"),
        ("TILE", PNG, {"threshold": "half"}, 422, "invalid_request"),
        ("TILE", PNG, {"output": "svg"}, 422, "invalid_request"),
        (
            b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\n1\r\n--x--\r\n',
            {"content-type": "multipart/form-data; boundary=x"},
            {},
            400,
            "bad_request",
        ),
    ],
    ids=[
        "empty",
        "not-an-image",
        "truncated",
        "unsupported-mode",
        "decompression-bomb",
        "text-content-type",
        "no-content-type",
        "threshold-above-1",
        "threshold-not-a-number",
        "unknown-output",
        "multipart-without-file",
    ],
)
def test_bad_input_is_a_4xx_saying_what_to_fix(
    client: TestClient,
    field_png: bytes,
    body: object,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
    code: str,
) -> None:
    content = {
        "TILE": field_png,
        "TRUNCATED": field_png[: len(field_png) // 2],
        "FLOAT_TIFF": float_tiff(),
    }.get(
        body,
        body,  # type: ignore[call-overload]
    )
    response = client.post(SEGMENT, content=content, headers=headers, params=params)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10


@pytest.mark.slow
def test_pixel_and_byte_limits_are_settings(field_png: bytes) -> None:
    settings = make_settings(image_limits={"max_pixels": 100_000, "max_bytes": 10_000_000})
    with TestClient(create_app(settings, CollectorRegistry())) as small:
        wait_ready(small)
        response = small.post(SEGMENT, content=field_png, headers=PNG)
        assert response.status_code == 413
        assert "172800" in response.json()["error"]["message"]  # 480 x 360 pixels
    settings = make_settings(image_limits={"max_pixels": 1_000, "max_bytes": 100_000})
    with TestClient(create_app(settings, CollectorRegistry())) as tiny:
        wait_ready(tiny)
        response = tiny.post(SEGMENT, content=field_png + b"\0" * 100_000, headers=PNG)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/api/v1/nothing").json()["error"]["code"] == "not_found"
    response = client.get(SEGMENT)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_model_description(client: TestClient) -> None:
    body = client.get("/api/v1/model").json()
    assert body["name"] == "cropseg-unet"
    assert len(body["sha256"]) == 64
    assert 0 < body["threshold"] < 1
    assert body["input"]["shape"] == [-1, -1, -1, 4]
    assert body["working_gsd_mm"] > 0
    assert body["metrics"]["evaluation"]  # the model card's metrics.json
    assert (body["tile_size"], body["tile_overlap"]) == (512, 128)


def test_info_lists_versions(client: TestClient) -> None:
    body = client.get("/api/v1/info").json()
    assert body["service"] == "cropseg-inference"
    assert body["model"]["version"] == MODEL_VERSION
    assert body["dependencies"]["onnxruntime"][0].isdigit()
    assert "torch" not in body["dependencies"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = {"status": "ready", "checks": {"model": {"status": "ok", "detail": "loaded and warmed up"}}}
    assert client.get("/readyz").json() == ready


def test_not_ready_before_warm_up_and_no_card(tmp_path, field_png: bytes) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.onnx"
    model.write_bytes(make_settings().model_path.read_bytes())
    app = create_app(make_settings(model_path=model, warmup_runs=0), CollectorRegistry())
    engine = app.state.engine
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/api/v1/model").json()["metrics"] is None
        engine.ready = False  # as during warm-up or shutdown
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["model"]["status"] == "failed"
        response = client.post(SEGMENT, content=field_png, headers=PNG)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        engine.ready = True


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/segment"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "image/tiff", "multipart/form-data"} <= set(body)
    assert "/v2/models/{model_name}/infer" in spec["paths"]
    headers = spec["paths"]["/api/v1/segment"]["post"]["responses"]["200"]["headers"]
    assert set(headers) == set(
        SegmentationHeaders(0.5, 4, 3, 0.5, 1, "rgb", 1.0, "m", "1", None).to_headers()
    ) | {Header.CONFIDENCE}
    assert headers[Header.TILES]["schema"] == {"type": "integer"}


def test_layouts_are_listed(client: TestClient) -> None:
    layouts = {layout["name"]: layout for layout in client.get("/api/v1/layouts").json()}
    assert set(layouts) == {"rgb", "cir", "rgbn", "nir_red", "red_nir"}
    assert layouts["cir"]["bands"] == ["nir", "red", "green"]
    assert layouts["cir"]["index"] == "ndvi"


@pytest.mark.slow
def test_declared_layout_is_how_the_channels_are_read(client: TestClient, field_tile: np.ndarray) -> None:
    bands = to_model_bands(field_tile, get_layout("rgb"))
    bands[..., 3] = np.clip(bands[..., 1].astype(int) * 2, 0, 255)
    cir = from_model_bands(bands, get_layout("cir"))
    response = segment(client, png(cir), layout="cir")
    assert response.status_code == 200
    assert response.headers["x-layout"] == "cir"
    assert np.array_equal(read_png(response.content), expected_mask(cir, "cir"))
    assert not np.array_equal(read_png(segment(client, png(cir)).content), expected_mask(cir, "cir"))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"layout": "bgr"}, "use one of rgb, cir, rgbn, nir_red, red_nir"),
        ({"layout": "rgbn"}, "needs 4 channels, but the image has 3"),
        ({"gsd_mm": 0}, "gsd_mm must be between"),
        ({"scale": 2}, "scale must be between"),
        ({"scale": 0.5, "gsd_mm": 1}, "not both"),
    ],
    ids=["unknown-layout", "channel-count", "gsd", "scale", "both"],
)
def test_layout_and_scale_errors_are_422_saying_what_to_send(
    client: TestClient, field_png: bytes, params: dict[str, object], fragment: str
) -> None:
    response = segment(client, field_png, **params)
    assert response.status_code == 422
    assert fragment in response.json()["error"]["message"]


@pytest.mark.slow
def test_fine_gsd_segments_at_working_resolution_and_answers_full_size(
    client: TestClient, field_tile: np.ndarray
) -> None:
    big = np.ascontiguousarray(np.repeat(np.repeat(field_tile, 2, axis=0), 2, axis=1))  # 960 x 720
    response = segment(client, png(big), gsd_mm=0.5, output="json", mask_encoding="rle")
    body = response.json()
    assert (body["width"], body["height"], body["working_scale"]) == (960, 720, 0.5)
    assert body["tiles"] == 1  # 480 x 360 after scaling: one pass instead of four tiles
    mask = rle_decode(body["mask"]["counts"], 720, 960)
    assert np.array_equal(mask, expected_mask(big, gsd_mm=0.5))
