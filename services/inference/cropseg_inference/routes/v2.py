"""Open Inference Protocol v2 routes (the KServe / Triton / MLServer REST API), so existing clients work.

Supported: server and model metadata, health, and ``infer`` with JSON tensors or Triton's
binary tensor extension (``Inference-Header-Content-Length``). The wire types and the codec
(what a body must hold, what the answer holds) are :mod:`cropseg_inference.oip`; every image
runs through the same core pipeline as ``/api/v1/segment``. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cropseg_core.errors import NotFoundError
from cropseg_core.web.bodies import read_limited_body
from cropseg_core.web.limits import MEMORY_COST, memory_budget
from cropseg_inference import SERVICE_NAME
from cropseg_inference.deps import Engine, Metrics, Settings
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.oip import codec
from cropseg_inference.oip.types import HEADER_LENGTH, InferenceRequest, InferenceResponse, ModelMetadata

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


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
def ready(engine: Engine) -> JSONResponse:
    return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)


@router.get("/models/{model_name}", response_model=ModelMetadata, summary="Model metadata")
@router.get(
    "/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, include_in_schema=False
)
def model_metadata(
    engine: Engine,
    model_name: str,
    model_version: str | None = None,
) -> ModelMetadata:
    _check_model(engine, model_name, model_version)
    return codec.model_metadata(engine.info)


@router.get("/models/{model_name}/ready", summary="Model readiness")
def model_ready(engine: Engine, model_name: str) -> JSONResponse:
    _check_model(engine, model_name)
    return JSONResponse({"name": model_name, "ready": engine.ready}, status_code=200 if engine.ready else 503)


def tensor_memory(body: bytes, header_length: str | None) -> int:
    """Memory a request needs beyond its body, estimated before anything is parsed: per byte of
    JSON (a number takes at least two) and per byte of binary tensor data (a pixel's channel)."""
    split = int(header_length) if header_length is not None and header_length.isdigit() else len(body)
    split = min(split, len(body))
    return split * MEMORY_COST["tensor-json"] + (len(body) - split) * MEMORY_COST["tensor"]


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
    engine: Engine,
    metrics: Metrics,
    settings: Settings,
    model_version: str | None = None,
) -> Response:
    with metrics.counting_failures():
        _check_model(engine, model_name, model_version)
        engine.admit()  # shed before the body is read and parsed
        body = await read_limited_body(request, settings.max_tensor_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        async with memory_budget(request).reserve(tensor_memory(body, header_length), "this request"):
            # Parsed in a thread: a 60 MB JSON body takes seconds, and the probes must be answered.
            inference, binary = await run_in_threadpool(codec.parse_request, body, header_length)
            del body
            images = await run_in_threadpool(
                codec.input_images, inference, binary, settings.image_limits.max_pixels
            )
            del binary
            codec.check_json_outputs(inference, images)
            options = codec.segment_options(inference)
            results = await engine.segment_batch(
                list(images), options.layout, options.threshold, gsd_mm=options.gsd_mm, scale=options.scale
            )
            del images
            content, headers, media_type = await run_in_threadpool(
                codec.build_response, inference, engine.info, results
            )
    for result in results:
        metrics.observe(result.timings, result.vegetation_fraction)
    return Response(content, media_type=media_type, headers=headers)
