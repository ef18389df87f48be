"""Open Inference Protocol bodies to images and back, for this server's one model.

The one input is ``image`` (UINT8, [N, H, W, C]: the channels of the declared sensor layout,
RGB by default), as JSON numbers or as binary tensor data; outputs are
``vegetation_probability`` (FP32, [N, 1, H, W]), ``mask`` (UINT8, [N, 1, H, W], 255 =
vegetation) and ``vegetation_fraction`` (FP32, [N]), each as JSON or, when asked for with
``binary_data``, binary. Request parameters (or the input's): ``threshold`` overrides the
model's, ``layout`` names the sensor layout (rgb, cir, ...), ``gsd_mm`` or ``scale`` set the
working resolution (:func:`segment_options`). Every error a client can cause is a
:class:`~cropseg_core.errors.ClientError` (or 413, 422) saying what to fix.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from cropseg_core.bands import Layout, get_layout
from cropseg_core.contracts import check_threshold
from cropseg_core.errors import ClientError, PayloadTooLargeError
from cropseg_core.pipeline import Segmentation
from cropseg_core.segmenter import INPUT_NAME, OUTPUT_NAME, ModelInfo
from cropseg_inference.oip.types import (
    HEADER_LENGTH,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestOutput,
    ResponseOutput,
    TensorMetadata,
)

MASK_OUTPUT, FRACTION_OUTPUT = "mask", "vegetation_fraction"
OUTPUTS = {
    OUTPUT_NAME: ("FP32", np.float32),
    MASK_OUTPUT: ("UINT8", np.uint8),
    FRACTION_OUTPUT: ("FP32", np.float32),
}
"""Each output's protocol datatype and numpy dtype, in the order they are answered by default."""

LEAN_JSON_BYTES = 1024 * 1024
"""Largest JSON parsed as it is: its numbers become Python objects (about 20 bytes each)."""
JSON_OUTPUT_VALUES = 4 * 1024 * 1024
"""Most values of one output written as JSON numbers (a 2048 x 2048 image): larger ones take
the binary tensor extension, which costs one byte (mask) or four (probability) per value instead
of a Python float and its text."""

_NUMBER_ARRAY = re.compile(rb"\[[-+0-9.eE,\s\[\]]*\]")
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")
_LIFTED = "\u0000cropseg: lifted image data"


def model_metadata(info: ModelInfo) -> ModelMetadata:
    """The model's metadata: its one input and three outputs, any batch size and image size."""
    return ModelMetadata(
        name=info.name,
        versions=[info.version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="UINT8", shape=[-1, -1, -1, -1])],
        outputs=[
            TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1, -1, -1]),
            TensorMetadata(name=MASK_OUTPUT, datatype="UINT8", shape=[-1, 1, -1, -1]),
            TensorMetadata(name=FRACTION_OUTPUT, datatype="FP32", shape=[-1]),
        ],
    )


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes | np.ndarray]:
    """The JSON part and the image data: the binary part (Triton's binary tensor extension), or,
    for a large JSON request, its ``data`` array read straight into numbers (see
    :func:`_lift_json_data`); an empty binary part otherwise."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ClientError(
                f"{HEADER_LENGTH} must be the byte length of the JSON header (at most {len(body)})"
            )
        split = int(header_length)
    header, data = body[:split], body[split:]
    if split > LEAN_JSON_BYTES:
        return _lift_json_data(header)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        raise _invalid(e) from e
    return request, data


def _invalid(error: ValidationError) -> ClientError:
    details = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in error.errors()[:5])
    return ClientError(f"invalid inference request: {details}")


def _lift_json_data(header: bytes) -> tuple[InferenceRequest, np.ndarray]:
    """A large JSON request: its image ``data`` read as numbers, the rest parsed as JSON.

    Parsed as JSON, 30 million pixel values become 30 million Python objects (about 1 GB); read
    with numpy they take 4 bytes each until checked and stored as uint8. The data is the
    longest run of numbers, commas and brackets; it is cut out and the rest parsed as JSON
    (whatever its key order or escapes), which must then have the cut exactly at the input's
    ``data``. A request whose JSON is large for any other reason is refused (400), so no key
    order or spelling sends a large body down a path that builds Python objects for it."""
    runs = _NUMBER_ARRAY.finditer(header)
    longest = max(runs, key=lambda run: run.end() - run.start(), default=None)
    rest = header
    if longest is not None and longest.end() - longest.start() > len(header) // 2:
        rest = header[: longest.start()] + json.dumps(_LIFTED).encode() + header[longest.end() :]
    if len(rest) > LEAN_JSON_BYTES:
        raise ClientError(
            f"invalid inference request: in {len(header)} bytes of JSON the input's data must be one array "
            f"of integers 0..255 and the rest at most {LEAN_JSON_BYTES} bytes; send large images as binary "
            f"tensors ({HEADER_LENGTH})"
        )
    try:
        document = json.loads(rest)
        lifted = document["inputs"][0]["data"] == _LIFTED
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ClientError(f"invalid inference request: not the JSON of an inference request ({e})") from e
    if not lifted:
        raise ClientError(f"invalid inference request: input {INPUT_NAME!r} has no data array")
    document["inputs"][0]["data"] = None
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as e:
        raise _invalid(e) from e
    text = header[longest.start() : longest.end()].translate(_BRACKETS_TO_SPACES)  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (and stops) at anything but a number
        try:
            values = (
                np.fromstring(text, dtype=np.float32, sep=",") if text.strip() else np.zeros(0, np.float32)
            )
        except (ValueError, DeprecationWarning) as e:
            raise ClientError(f"input {INPUT_NAME!r} data must be integers 0..255") from e
    return request, values


def input_images(request: InferenceRequest, binary: bytes | np.ndarray, max_pixels: int) -> np.ndarray:
    """The ``image`` input as a (N, H, W, C) uint8 array, checked against the declared shape
    (C, 1 to 4, must then fit the declared layout)."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        raise ClientError(f"expected exactly one input named {INPUT_NAME!r}")
    tensor = request.inputs[0]
    if tensor.datatype != "UINT8":
        raise ClientError(
            f"input {INPUT_NAME!r} must have datatype UINT8 (8-bit bands), got {tensor.datatype}"
        )
    shape = tensor.shape
    if len(shape) != 4 or not 1 <= shape[3] <= 4 or min(shape) < 1:
        raise ClientError(
            f"input {INPUT_NAME!r} must have shape [N, H, W, C] with N, H, W >= 1 and C 1-4 "
            f"(the layout's channels), got {shape}"
        )
    if shape[0] * shape[1] * shape[2] > max_pixels:
        raise PayloadTooLargeError(
            f"{shape[0]} x {shape[1]} x {shape[2]} pixels exceed the limit of {max_pixels}: "
            "send fewer or smaller images"
        )
    expected = int(np.prod(shape))
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if isinstance(binary, np.ndarray):  # a large JSON request's data, read by _lift_json_data
        return _checked_pixels(binary, shape, expected)
    if binary_size is not None:
        if binary_size != expected or len(binary) != expected:
            raise ClientError(f"binary image data must be exactly {expected} bytes for shape {shape}")
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    if tensor.data is None:
        raise ClientError(f"input {INPUT_NAME!r} has no data (give 'data' or binary_data_size)")
    try:
        values = np.asarray(tensor.data)  # JSON integers only: 0.5, "7" or true are refused, not cast
    except (ValueError, TypeError, OverflowError) as e:
        raise ClientError(f"input {INPUT_NAME!r} data must be integers 0..255") from e
    if values.size and values.dtype.kind not in "iu":
        raise ClientError(f"input {INPUT_NAME!r} data must be integers 0..255, not {values.dtype.name}")
    return _checked_pixels(values, shape, expected)


def _checked_pixels(values: np.ndarray, shape: list[int], expected: int) -> np.ndarray:
    """Values given as JSON numbers, as uint8 pixels of ``shape``: integers 0..255 only."""
    values = values.ravel()
    if values.size != expected:
        raise ClientError(f"input {INPUT_NAME!r} has {values.size} values, shape {shape} needs {expected}")
    fractional = values.dtype.kind == "f" and bool(np.any(np.mod(values, 1)))
    if values.size and (values.min() < 0 or values.max() > 255 or fractional):
        raise ClientError(f"input {INPUT_NAME!r} data must be integers 0..255")
    return values.astype(np.uint8).reshape(shape)


@dataclass(frozen=True)
class SegmentOptions:
    """What a request's parameters ask of the segmentation (None: the model's own)."""

    layout: Layout
    threshold: float | None = None
    gsd_mm: float | None = None
    scale: float | None = None


def segment_options(request: InferenceRequest) -> SegmentOptions:
    """The request's parameters, the input's overriding the request's, checked."""
    parameters = {**(request.parameters or {}), **(request.inputs[0].parameters or {})}
    threshold = check_threshold(_number(parameters, "threshold"), "parameter 'threshold'")
    layout = parameters.get("layout")
    if layout is not None and not isinstance(layout, str):
        raise ClientError(f"parameter 'layout' must be a string, got {json.dumps(layout)}")
    return SegmentOptions(
        layout=get_layout(layout),
        threshold=threshold,
        gsd_mm=_number(parameters, "gsd_mm"),
        scale=_number(parameters, "scale"),
    )


def _number(parameters: Parameters, name: str) -> float | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool | str):
        raise ClientError(f"parameter {name!r} must be a number, got {json.dumps(value)}")
    return float(value)


def _requested_outputs(request: InferenceRequest) -> list[RequestOutput]:
    if not request.outputs:
        return [RequestOutput(name=name) for name in OUTPUTS]
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise ClientError(f"unknown output {output.name!r}; available: {', '.join(OUTPUTS)}")
    return request.outputs


def _output_array(name: str, results: list[Segmentation]) -> np.ndarray:
    if name == OUTPUT_NAME:
        return np.stack([r.probability for r in results])[:, None]
    if name == MASK_OUTPUT:
        return np.stack([r.mask for r in results])[:, None]
    return np.array([r.vegetation_fraction for r in results], dtype=np.float32)


def check_json_outputs(request: InferenceRequest, images: np.ndarray) -> None:
    """Refuse, before any work, a JSON output too large to write (413 saying what to ask for)."""
    pixels = int(images.shape[0] * images.shape[1] * images.shape[2])
    for wanted in _requested_outputs(request):
        as_json = wanted.name != FRACTION_OUTPUT and not (wanted.parameters or {}).get("binary_data")
        if as_json and pixels > JSON_OUTPUT_VALUES:
            raise PayloadTooLargeError(
                f"output {wanted.name!r} would be {pixels} JSON numbers (limit {JSON_OUTPUT_VALUES}): "
                f'ask for it with "parameters": {{"binary_data": true}} (binary tensor extension), '
                f"or request only {FRACTION_OUTPUT!r}"
            )


def build_response(
    request: InferenceRequest, info: ModelInfo, results: list[Segmentation]
) -> tuple[bytes, dict[str, str], str]:
    """Body, extra headers and media type; binary when any output asks for binary_data."""
    outputs, blobs = [], []
    for wanted in _requested_outputs(request):
        datatype, dtype = OUTPUTS[wanted.name]
        array = _output_array(wanted.name, results).astype(dtype, copy=False)
        output = ResponseOutput(name=wanted.name, shape=list(array.shape), datatype=datatype)
        if (wanted.parameters or {}).get("binary_data"):
            blob = np.ascontiguousarray(array).tobytes()
            output.parameters = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output.data = array.ravel().tolist()
        outputs.append(output)
    response = InferenceResponse(
        model_name=info.name, model_version=info.version, id=request.id, outputs=outputs
    )
    header = response.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"
