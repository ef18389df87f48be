from __future__ import annotations

import json

import numpy as np
import pytest
from cropseg_inference.main import create_app
from cropseg_inference.oip.codec import input_images, parse_request
from fastapi.testclient import TestClient
from inference_testing import MODEL, MODEL_VERSION, make_settings, wait_ready
from prometheus_client import CollectorRegistry

from cropseg_core.bands import from_model_bands, get_layout, to_model_bands
from cropseg_core.errors import ClientError
from cropseg_core.pipeline import Pipeline, PipelineConfig
from cropseg_core.segmenter import OnnxSegmenter

INFER = "/v2/models/cropseg-unet/infer"


@pytest.fixture(scope="module")
def small_tile(field_tile: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(field_tile[:64, :96])


def reference(image: np.ndarray, layout: str = "rgb") -> np.ndarray:
    """The core pipeline's probability for the image, run in this process (the tile is small:
    no scaling, one tile; NIR layouts refined by their index)."""
    segmenter = OnnxSegmenter(MODEL)
    info = segmenter.load()
    pipeline = Pipeline(PipelineConfig(model_gsd_mm=info.working_gsd_mm))
    return pipeline.run(segmenter.predict, image, info.threshold, get_layout(layout)).probability


def model_threshold() -> float:
    segmenter = OnnxSegmenter(MODEL)
    return segmenter.load().threshold


def test_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/cropseg-unet/ready").json() == {"name": "cropseg-unet", "ready": True}
    meta = client.get("/v2/models/cropseg-unet").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["vegetation_probability", "mask", "vegetation_fraction"]
    assert client.get(f"/v2/models/cropseg-unet/versions/{MODEL_VERSION}").status_code == 200


def test_json_inference_matches_the_model(client: TestClient, small_tile: np.ndarray) -> None:
    batch = np.stack([small_tile, small_tile[::-1]])
    request = {
        "id": "req-7",
        "inputs": [
            {"name": "image", "shape": list(batch.shape), "datatype": "UINT8", "data": batch.ravel().tolist()}
        ],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("cropseg-unet", MODEL_VERSION, "req-7")
    outputs = {o["name"]: o for o in body["outputs"]}
    probability = np.array(outputs["vegetation_probability"]["data"], np.float32).reshape(2, 1, 64, 96)
    assert outputs["vegetation_probability"]["shape"] == [2, 1, 64, 96]
    for i in range(2):
        assert np.abs(probability[i, 0] - reference(batch[i])).max() < 1e-5
    mask = np.array(outputs["mask"]["data"]).reshape(2, 64, 96)
    assert np.array_equal(mask, np.where(probability[:, 0] > model_threshold(), 255, 0))
    assert outputs["vegetation_fraction"]["data"] == pytest.approx((mask == 255).mean(axis=(1, 2)), abs=1e-6)


def test_binary_tensor_extension(client: TestClient, small_tile: np.ndarray) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 64, 96, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": small_tile.size},
                }
            ],
            "outputs": [
                {"name": "mask", "parameters": {"binary_data": True}},
                {"name": "vegetation_fraction"},
            ],
            "parameters": {"threshold": 0.3},
        }
    ).encode()
    response = client.post(
        INFER,
        content=header + small_tile.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    split = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:split])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 64 * 96
    mask = np.frombuffer(response.content[split:], np.uint8).reshape(64, 96)
    assert np.array_equal(mask, np.where(reference(small_tile) > 0.3, 255, 0))
    assert meta["outputs"][1]["data"][0] == pytest.approx((mask == 255).mean(), abs=1e-6)


def tensor(shape: list[int], datatype: str = "UINT8", data: object = None) -> dict[str, object]:
    count = int(np.prod(shape)) if shape else 0
    return {
        "name": "image",
        "shape": shape,
        "datatype": datatype,
        "data": [0] * count if data is None else data,
    }


@pytest.mark.parametrize(
    ("request_body", "status", "fragment"),
    [
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [tensor([1, 4, 4, 3], "FP32")]}, 400, "UINT8"),
        ({"inputs": [tensor([4, 4, 3])]}, 400, "[N, H, W, C]"),
        ({"inputs": [tensor([1, 2, 2, 3])], "parameters": {"layout": "hsv"}}, 422, "rgb, cir"),
        ({"inputs": [tensor([1, 2, 2, 3])], "parameters": {"layout": "rgbn"}}, 422, "has 3"),
        ({"inputs": [tensor([1, 2, 2, 3])], "parameters": {"gsd_mm": 0}}, 422, "gsd_mm"),
        ({"inputs": [tensor([1, 4, 4, 3], data=[1, 2, 3])]}, 400, "48"),
        ({"inputs": [tensor([1, 2, 2, 3], data=[300] * 12)]}, 400, "0..255"),
        ({"inputs": [tensor([1, 2, 2, 3], data=["a"] * 12)]}, 400, "integers"),
        ({"inputs": [{**tensor([1, 2, 2, 3]), "name": "pixels"}]}, 400, "'image'"),
        ({"inputs": [tensor([1, 2, 2, 3])], "outputs": [{"name": "logits"}]}, 400, "unknown output"),
        ({"inputs": [tensor([1, 2, 2, 3])], "parameters": {"threshold": 3}}, 400, "threshold"),
        ({"inputs": [tensor([1, 10000, 10000, 3], data=[])]}, 413, "limit"),
    ],
    ids=[
        "no-inputs",
        "wrong-datatype",
        "wrong-rank",
        "unknown-layout",
        "layout-channels",
        "bad-gsd",
        "wrong-count",
        "out-of-range",
        "not-numbers",
        "wrong-name",
        "unknown-output",
        "bad-threshold",
        "too-many-pixels",
    ],
)
def test_bad_requests_answer_an_oip_error(
    client: TestClient, request_body: dict[str, object], status: int, fragment: str
) -> None:
    response = client.post(INFER, json=request_body)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_unknown_model_and_malformed_json(client: TestClient) -> None:
    assert client.post("/v2/models/other/infer", json={"inputs": [tensor([1, 1, 1, 3])]}).status_code == 404
    assert client.get("/v2/models/cropseg-unet/versions/9.9").status_code == 404
    response = client.post(INFER, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "invalid inference request" in response.json()["error"]
    response = client.post(INFER, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert response.status_code == 400


def test_layout_parameter_reads_the_channels_in_that_order(
    client: TestClient, small_tile: np.ndarray
) -> None:
    """A CIR tensor (NIR, red, green) gives what the model makes of those bands; read as RGB it
    would be another image."""
    bands = to_model_bands(small_tile, get_layout("rgb"))
    bands[..., 3] = np.clip(bands[..., 1].astype(int) * 2, 0, 255)  # a NIR band: bright where green
    cir = from_model_bands(bands, get_layout("cir"))
    request = {
        "inputs": [
            {**tensor(list(cir[None].shape), data=cir.ravel().tolist()), "parameters": {"layout": "cir"}}
        ],
        "outputs": [{"name": "vegetation_probability"}],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200
    probability = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(cir.shape[:2])
    assert np.abs(probability - reference(cir, "cir")).max() < 1e-5
    assert np.abs(probability - reference(cir)).max() > 1e-2  # the same bytes read as RGB differ


@pytest.mark.slow
def test_a_batch_larger_than_the_queue_is_computed_not_refused_forever(small_tile: np.ndarray) -> None:
    """129 images with a queue of 8 tiles: queued chunk by chunk on an idle server (it used to
    answer 503 + Retry-After on every try while the first 128 tiles were computed anyway)."""
    batch = np.stack([small_tile] * 129)
    header = json.dumps({"inputs": [{"name": "image", "shape": list(batch.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": batch.size}}],
                         "outputs": [{"name": "vegetation_fraction"}]}).encode()  # fmt: skip
    settings = make_settings(max_queue_tiles=8)
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        wait_ready(client)
        response = client.post(
            INFER,
            content=header + batch.tobytes(),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        fractions = {o["name"]: o for o in response.json()["outputs"]}["vegetation_fraction"]["data"]
        assert len(fractions) == 129
        assert len(set(fractions)) == 1  # the same image: the same answer in every chunk
        assert "cropseg_inference_rejected_total 0.0" in client.get("/metrics").text


@pytest.mark.slow
def test_a_large_json_request_is_read_without_python_numbers(
    client: TestClient, field_tile: np.ndarray
) -> None:
    """Over 1 MiB of JSON the data array is read by numpy (nested or flat alike) and the answer
    is the binary request's; junk in it is still a 400."""
    image = np.ascontiguousarray(field_tile[:300, :400])  # 360,000 values: ~1.4 MB of JSON
    only_fraction = [{"name": "vegetation_fraction"}]

    def infer(data: object, shape: list[int] = [1, 300, 400, 3]) -> dict[str, object]:  # noqa: B006
        body = {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8", "data": data}],
                "outputs": only_fraction}  # fmt: skip
        return client.post(INFER, content=json.dumps(body))

    tensor = {"name": "image", "shape": [1, 300, 400, 3], "datatype": "UINT8",
              "parameters": {"binary_data_size": image.size}}  # fmt: skip
    header = json.dumps({"inputs": [tensor], "outputs": only_fraction})
    binary = client.post(INFER, content=header.encode() + image.tobytes(),
                         headers={"inference-header-content-length": str(len(header))})  # fmt: skip
    expected = binary.json()["outputs"][0]["data"]
    for data in (image.ravel().tolist(), image[None].tolist()):  # flat, and nested as [N][H][W][C]
        answer = infer(data)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == expected
    for junk in (256, -1, 1.5, "7", None, True):
        values = image.ravel().tolist()
        values[1234] = junk
        refused = infer(values)
        assert refused.status_code == 400, (junk, refused.text)
    short = infer(image.ravel().tolist()[:-3])
    assert short.status_code == 400
    assert "values, shape" in short.json()["error"]


def test_a_json_output_too_large_to_write_is_refused_before_any_work(client: TestClient) -> None:
    shape = [1, 2100, 2100, 3]
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8",
                                     "parameters": {"binary_data_size": int(np.prod(shape))}}]})  # fmt: skip
    body = header.encode() + bytes(int(np.prod(shape)))
    response = client.post(INFER, content=body, headers={"inference-header-content-length": str(len(header))})
    assert response.status_code == 413
    assert '"binary_data": true' in response.json()["error"]


@pytest.mark.slow
def test_no_key_order_or_escape_sends_a_large_json_request_down_the_slow_path(field_tile: np.ndarray) -> None:
    """A parameter named "data" before the tensor, the key spelled with an escape, the tensor's
    keys in any order: the image data is still read by numpy, never as Python numbers; JSON that
    is large for another reason is refused (400) instead of parsed."""
    image = np.ascontiguousarray(field_tile[:300, :400])
    values = ",".join(map(str, image.ravel().tolist()))
    shape = '"shape":[1,300,400,3],"datatype":"UINT8"'
    bodies = [
        '{"parameters":{"data":7},"inputs":[{"name":"image",' + shape + ',"data":[' + values + "]}]}",
        '{"inputs":[{"d\\u0061ta":[' + values + '],"name":"image",' + shape + "}]}",
        '{"inputs":[{"parameters":{"data":"[0]"},"data":[[' + values + ']],"name":"image",' + shape + "}]}",
    ]
    for body in bodies:
        request, data = parse_request(body.encode(), None)
        assert isinstance(data, np.ndarray), body[:80]
        assert np.array_equal(input_images(request, data, 10**8)[0], image)
    padded = '{"id":"' + "x" * 2_000_000 + '","inputs":[{"name":"image",' + shape + ',"data":[0]}]}'
    with pytest.raises(ClientError, match="the rest at most 1048576 bytes"):
        parse_request(padded.encode(), None)
