"""The Open Inference Protocol codec on its own: bodies in, arrays out, and back, no server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cropseg_inference.oip import codec
from cropseg_inference.oip.types import HEADER_LENGTH, InferenceRequest

from cropseg_core.bands import LayoutError
from cropseg_core.errors import ClientError, PayloadTooLargeError
from cropseg_core.pipeline import Segmentation
from cropseg_core.segmenter import ModelInfo

INFO = ModelInfo(name="cropseg-unet", version="9.1.0", sha256="0" * 64, threshold=0.5, metadata={})


def image_tensor(shape: list[int], **fields: object) -> dict[str, object]:
    return {"name": "image", "shape": shape, "datatype": "UINT8", **fields}


def request(*inputs: dict[str, object], **fields: object) -> InferenceRequest:
    return InferenceRequest.model_validate({"inputs": list(inputs), **fields})


def segmentation(probability: np.ndarray) -> Segmentation:
    mask = np.where(probability > 0.5, 255, 0).astype(np.uint8)
    return Segmentation(probability=probability, mask=mask, threshold=0.5, tiles=1, scale=1.0, layout="rgb")


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)


def test_binary_and_json_requests_decode_to_the_same_pixels(images: np.ndarray) -> None:
    header = json.dumps(
        {"inputs": [image_tensor(list(images.shape), parameters={"binary_data_size": images.size})]}
    )
    parsed, binary = codec.parse_request(header.encode() + images.tobytes(), str(len(header)))
    assert binary == images.tobytes()
    assert np.array_equal(codec.input_images(parsed, binary, 10**6), images)
    as_json = json.dumps({"inputs": [image_tensor(list(images.shape), data=images.ravel().tolist())]})
    parsed, rest = codec.parse_request(as_json.encode(), None)
    assert rest == b""
    decoded = codec.input_images(parsed, rest, 10**6)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, images)


def test_a_response_encodes_what_the_request_asked_for_and_decodes_back() -> None:
    probabilities = [np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6), np.full((5, 6), 0.75, np.float32)]
    results = [segmentation(p) for p in probabilities]
    wanted = request(
        image_tensor([2, 5, 6, 3]),
        id="r-1",
        outputs=[{"name": "vegetation_probability", "parameters": {"binary_data": True}}, {"name": "mask"}],
    )
    body, headers, media_type = codec.build_response(wanted, INFO, results)
    assert media_type == "application/octet-stream"
    split = int(headers[HEADER_LENGTH])
    meta = json.loads(body[:split])
    assert (meta["model_name"], meta["model_version"], meta["id"]) == ("cropseg-unet", "9.1.0", "r-1")
    probability, mask = meta["outputs"]
    assert (probability["datatype"], probability["shape"]) == ("FP32", [2, 1, 5, 6])
    assert probability["parameters"] == {"binary_data_size": 2 * 30 * 4}
    assert np.array_equal(np.frombuffer(body[split:], np.float32).reshape(2, 5, 6), np.stack(probabilities))
    assert (mask["datatype"], mask["shape"]) == ("UINT8", [2, 1, 5, 6])
    assert np.array_equal(np.array(mask["data"]).reshape(2, 5, 6), np.stack([r.mask for r in results]))

    body, headers, media_type = codec.build_response(request(image_tensor([2, 5, 6, 3])), INFO, results)
    assert (headers, media_type) == ({}, "application/json")
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert list(outputs) == list(codec.OUTPUTS)  # all three by default
    assert outputs["vegetation_fraction"]["data"] == pytest.approx([r.vegetation_fraction for r in results])


@pytest.mark.parametrize(
    ("tensor", "binary", "fragment"),
    [
        ({**image_tensor([1, 2, 2, 3], data=[0] * 12), "datatype": "FP32"}, b"", "must have datatype UINT8"),
        ({**image_tensor([1, 2, 2, 3], data=[0] * 12), "datatype": "INT8"}, b"", "must have datatype UINT8"),
        (image_tensor([1, 2, 2, 5], data=[0] * 20), b"", "C 1-4"),
        (image_tensor([1, 2, 2, 3], parameters={"binary_data_size": 12}), bytes(11), "exactly 12 bytes"),
        (image_tensor([1, 2, 2, 3]), b"", "has no data"),
        (image_tensor([1, 2, 2, 3], data=["a"] * 12), b"", "integers 0..255"),
        (image_tensor([1, 2, 2, 3], data=[-1] * 12), b"", "integers 0..255"),
        (image_tensor([1, 2, 2, 3], data=[0.5] * 12), b"", "integers 0..255"),  # was cast to 0
        (image_tensor([1, 2, 2, 3], data=["7"] * 12), b"", "integers 0..255"),  # was cast to 7
        (image_tensor([1, 2, 2, 3], data=[True] * 12), b"", "integers 0..255"),
    ],
    ids=[
        "fp32",
        "int8",
        "five-channels",
        "binary-short",
        "no-data",
        "text",
        "negative",
        "fraction",
        "numeric-text",
        "boolean",
    ],
)
def test_a_bad_input_tensor_is_a_client_error(
    tensor: dict[str, object], binary: bytes, fragment: str
) -> None:
    with pytest.raises(ClientError, match=fragment):
        codec.input_images(request(tensor), binary, 10**6)


def test_too_many_pixels_are_refused_before_they_are_read() -> None:
    with pytest.raises(PayloadTooLargeError, match="exceed the limit of 100"):
        codec.input_images(request(image_tensor([2, 10, 10, 3], data=[])), b"", 100)


@pytest.mark.slow
def test_a_large_json_request_is_lifted_into_numbers() -> None:
    """Over LEAN_JSON_BYTES the data array is read by numpy (nested as sent), never as JSON."""
    pixels = np.random.default_rng(3).integers(0, 256, (1, 250, 300, 3), dtype=np.uint8)
    body = json.dumps(
        {"id": "big", "inputs": [image_tensor(list(pixels.shape), data=pixels.tolist())]}
    ).encode()
    assert len(body) > codec.LEAN_JSON_BYTES
    parsed, values = codec.parse_request(body, None)
    assert isinstance(values, np.ndarray)
    assert values.dtype == np.float32
    assert parsed.id == "big"
    assert parsed.inputs[0].data is None  # the numbers were cut out before the JSON was parsed
    assert np.array_equal(codec.input_images(parsed, values, 10**6), pixels)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"inputs": [{{image}, "data": [{numbers}]}], "x": 1', "not the JSON of an inference request"),
        ('{"inputs": [{{image}, "data": [0]}], "other": [{numbers}]}', "has no data array"),
        ('{"inputs": [{{image}, "data": [{numbers}, 1e]}]}', "integers 0..255"),
        ('{"id": "{padding}", "inputs": [{{image}, "data": [0]}]}', "the rest at most 1048576 bytes"),
    ],
    ids=["broken-json", "data-elsewhere", "not-a-number", "large-for-another-reason"],
)
def test_a_large_json_request_that_cannot_be_lifted_is_refused(body: str, fragment: str) -> None:
    parts = {
        "{image}": '"name": "image", "shape": [1], "datatype": "UINT8"',
        "{numbers}": ",".join(["7"] * 600_000),
        "{padding}": "x" * 1_100_000,
    }
    for placeholder, text in parts.items():
        body = body.replace(placeholder, text)
    with pytest.raises(ClientError, match=fragment):
        codec.parse_request(body.encode(), None)


@pytest.mark.parametrize("header_length", ["-3", "abc", "999999"])
def test_a_bad_header_length_is_a_client_error(header_length: str) -> None:
    with pytest.raises(ClientError, match=HEADER_LENGTH):
        codec.parse_request(b'{"inputs": []}', header_length)


def test_an_invalid_request_names_the_field() -> None:
    with pytest.raises(ClientError, match=r"invalid inference request: inputs\.0\.shape"):
        codec.parse_request(b'{"inputs": [{"name": "image", "datatype": "UINT8"}]}', None)


def test_the_input_parameters_override_the_request_parameters() -> None:
    options = codec.segment_options(
        request(
            image_tensor([1, 1, 1, 4], parameters={"threshold": 0.25, "layout": "rgbn"}),
            parameters={"threshold": 0.9, "gsd_mm": 2, "scale": 0.5},
        )
    )
    assert (options.threshold, options.layout.name, options.gsd_mm, options.scale) == (0.25, "rgbn", 2.0, 0.5)
    defaults = codec.segment_options(request(image_tensor([1, 1, 1, 3])))
    assert (defaults.threshold, defaults.layout.name, defaults.gsd_mm, defaults.scale) == (
        None,
        "rgb",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("parameters", "error", "fragment"),
    [
        ({"threshold": True}, ClientError, "'threshold' must be a number"),
        ({"threshold": "0.5"}, ClientError, "'threshold' must be a number"),
        ({"threshold": 1.5}, ClientError, "from 0 to 1"),
        ({"layout": 3}, ClientError, "'layout' must be a string"),
        ({"layout": "hsv"}, LayoutError, "unknown layout"),
        ({"scale": "big"}, ClientError, "'scale' must be a number"),
    ],
    ids=[
        "bool-threshold",
        "text-threshold",
        "threshold-above-1",
        "numeric-layout",
        "unknown-layout",
        "text-scale",
    ],
)
def test_bad_parameters_are_refused(
    parameters: dict[str, object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        codec.segment_options(request(image_tensor([1, 1, 1, 3]), parameters=parameters))


def test_a_json_output_too_large_to_write_is_refused_unless_binary() -> None:
    images = np.zeros((1, 2100, 2100, 3), np.uint8)
    with pytest.raises(PayloadTooLargeError, match='"binary_data": true'):
        codec.check_json_outputs(request(image_tensor([1, 2100, 2100, 3])), images)
    binary = [{"name": "mask", "parameters": {"binary_data": True}}, {"name": "vegetation_fraction"}]
    codec.check_json_outputs(request(image_tensor([1, 2100, 2100, 3]), outputs=binary), images)
    with pytest.raises(ClientError, match="unknown output 'logits'"):
        codec.check_json_outputs(
            request(image_tensor([1, 1, 1, 3]), outputs=[{"name": "logits"}]), images[:, :1, :1]
        )


def test_model_metadata_describes_the_one_input_and_three_outputs() -> None:
    meta = codec.model_metadata(INFO)
    assert (meta.name, meta.versions) == ("cropseg-unet", ["9.1.0"])
    assert [(t.name, t.datatype) for t in meta.inputs] == [("image", "UINT8")]
    assert [(t.name, t.datatype) for t in meta.outputs] == [(n, d) for n, (d, _) in codec.OUTPUTS.items()]


@pytest.mark.slow
def test_the_protocol_imports_without_the_web_framework() -> None:
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in ("fastapi", "starlette", "uvicorn"))
    program = f"import sys\n{blocked}import cropseg_inference.oip.codec, cropseg_inference.oip.types\n"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
