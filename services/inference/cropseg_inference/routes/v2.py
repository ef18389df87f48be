"""Open Inference Protocol v2 (the KServe / Triton / MLServer REST API), so existing clients work.

Supported: server and model metadata, health, and ``infer`` with JSON tensors or Triton's
binary tensor extension (``Inference-Header-Content-Length``). The one input is ``image``
(UINT8, [N, H, W, C]: the channels of the declared sensor layout, RGB by default); outputs
are ``vegetation_probability`` (FP32, [N, 1, H, W]), ``mask`` (UINT8, [N, 1, H, W], 255 =
vegetation) and ``vegetation_fraction`` (FP32, [N]). Request parameters (or the input's):
``threshold`` overrides the model's, ``layout`` names the sensor layout (rgb, cir, ...),
``gsd_mm`` or ``scale`` set the working resolution; every image runs through the same core
pipeline as ``/api/v1/segment``. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import get_layout
from cropseg_core.errors import ClientError, NotFoundError, PayloadTooLargeError
from cropseg_core.pipeline import Segmentation
from cropseg_core.segmenter import INPUT_NAME, OUTPUT_NAME
from cropseg_core.web.bodies import read_limited_body
from cropseg_core.web.limits import MEMORY_COST, memory_budget
from cropseg_inference import SERVICE_NAME
from cropseg_inference.deps import get_app_settings, get_engine, get_metrics
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
MASK_OUTPUT, FRACTION_OUTPUT = "mask", "vegetation_fraction"
OUTPUTS = {
    OUTPUT_NAME: ("FP32", np.float32),
    MASK_OUTPUT: ("UINT8", np.uint8),
    FRACTION_OUTPUT: ("FP32", np.float32),
}
Parameters = dict[str, str | int | float | bool]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def _check_model(engine: SegmentationEngine, name: str, version: str | None = None) -> None:
    info = engine.info
    if name != info.name:
        raise NotFoundError(f"unknown model {name!r}; this server serves {info.name!r}")
    if version is not None and version != info.version:
        raise NotFoundError(f"model {name!r} has no version {version!r}; served version is {info.version!r}")


@router.get("", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return {"name": SERVICE_NAME, "version": "2", "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server liveness")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness")
def ready(engine: Annotated[SegmentationEngine, Depends(get_engine)]) -> JSONResponse:
    return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)


@router.get("/models/{model_name}", response_model=ModelMetadata, summary="Model metadata")
@router.get(
    "/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, include_in_schema=False
)
def model_metadata(
    engine: Annotated[SegmentationEngine, Depends(get_engine)],
    model_name: str,
    model_version: str | None = None,
) -> ModelMetadata:
    _check_model(engine, model_name, model_version)
    return ModelMetadata(
        name=engine.info.name,
        versions=[engine.info.version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="UINT8", shape=[-1, -1, -1, -1])],
        outputs=[
            TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1, -1, -1]),
            TensorMetadata(name=MASK_OUTPUT, datatype="UINT8", shape=[-1, 1, -1, -1]),
            TensorMetadata(name=FRACTION_OUTPUT, datatype="FP32", shape=[-1]),
        ],
    )


@router.get("/models/{model_name}/ready", summary="Model readiness")
def model_ready(engine: Annotated[SegmentationEngine, Depends(get_engine)], model_name: str) -> JSONResponse:
    _check_model(engine, model_name)
    return JSONResponse({"name": model_name, "ready": engine.ready}, status_code=200 if engine.ready else 503)


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


LEAN_JSON_BYTES = 1024 * 1024
"""Largest JSON parsed as it is: its numbers become Python objects (about 20 bytes each)."""
_NUMBER_ARRAY = re.compile(rb"\[[-+0-9.eE,\s\[\]]*\]")
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")
_LIFTED = "\u0000cropseg: lifted image data"


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


def tensor_memory(body: bytes, header_length: str | None) -> int:
    """Memory a request needs beyond its body, estimated before anything is parsed: per byte of
    JSON (a number takes at least two) and per byte of binary tensor data (a pixel's channel)."""
    split = int(header_length) if header_length is not None and header_length.isdigit() else len(body)
    split = min(split, len(body))
    return split * MEMORY_COST["tensor-json"] + (len(body) - split) * MEMORY_COST["tensor"]


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
        values = np.asarray(tensor.data, dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as e:
        raise ClientError(f"input {INPUT_NAME!r} data must be integers 0..255") from e
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


JSON_OUTPUT_VALUES = 4 * 1024 * 1024
"""Most values of one output written as JSON numbers (a 2048 x 2048 image): larger ones take
the binary tensor extension, which costs one byte (mask) or four (probability) per value instead
of a Python float and its text."""


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
    request: InferenceRequest, engine: SegmentationEngine, results: list[Segmentation]
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
        model_name=engine.info.name, model_version=engine.info.version, id=request.id, outputs=outputs
    )
    header = response.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferenceRequest.model_json_schema(),
                "example": {
                    "id": "tile-1",
                    "parameters": {"threshold": 0.5},
                    "inputs": [
                        {"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [0] * 12}
                    ],
                    "outputs": [{"name": "mask"}, {"name": "vegetation_fraction"}],
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/models/{model_name}/infer",
    summary="Run inference (Open Inference Protocol v2)",
    response_model=InferenceResponse,
    openapi_extra=INFER_BODY,
    responses={
        400: {"description": "Invalid request"},
        404: {"description": "Unknown model"},
        413: {"description": "Too large"},
        503: {"description": "At capacity"},
    },
)
@router.post("/models/{model_name}/versions/{model_version}/infer", include_in_schema=False)
async def infer(
    request: Request,
    model_name: str,
    engine: Annotated[SegmentationEngine, Depends(get_engine)],
    metrics: Annotated[InferenceMetrics, Depends(get_metrics)],
    settings: Annotated[InferenceSettings, Depends(get_app_settings)],
    model_version: str | None = None,
) -> Response:
    try:
        _check_model(engine, model_name, model_version)
        engine.admit()  # shed before the body is read and parsed
        body = await read_limited_body(request, settings.max_tensor_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        async with memory_budget(request).reserve(tensor_memory(body, header_length), "this request"):
            # Parsed in a thread: a 60 MB JSON body takes seconds, and the probes must be answered.
            inference, binary = await run_in_threadpool(parse_request, body, header_length)
            del body
            images = await run_in_threadpool(
                input_images, inference, binary, settings.image_limits.max_pixels
            )
            del binary
            check_json_outputs(inference, images)
            parameters = {**(inference.parameters or {}), **(inference.inputs[0].parameters or {})}
            threshold = _number(parameters, "threshold")
            if threshold is not None and not 0 <= threshold <= 1:
                raise ClientError(f"parameter 'threshold' must be a number from 0 to 1, got {threshold}")
            layout = parameters.get("layout")
            if layout is not None and not isinstance(layout, str):
                raise ClientError(f"parameter 'layout' must be a string, got {json.dumps(layout)}")
            sensor = get_layout(layout)
            gsd_mm, scale = _number(parameters, "gsd_mm"), _number(parameters, "scale")
            results = await engine.segment_batch(list(images), sensor, threshold, gsd_mm=gsd_mm, scale=scale)
            del images
            content, headers, media_type = await run_in_threadpool(build_response, inference, engine, results)
    except Exception:
        metrics.segmentation_result.labels("failure").inc()
        raise
    except asyncio.CancelledError:  # the client went away (cropseg_core.web.limits)
        metrics.segmentation_result.labels("cancelled").inc()
        raise
    for result in results:
        metrics.observe(result.timings, result.vegetation_fraction)
    return Response(content, media_type=media_type, headers=headers)
