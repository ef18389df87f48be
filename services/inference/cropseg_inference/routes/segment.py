"""``POST /api/v1/segment``: an image in, its vegetation mask out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cropseg_core.imaging import decode_image
from cropseg_core.web.bodies import read_upload
from cropseg_core.web.errors import error_responses
from cropseg_inference.deps import get_app_settings, get_engine, get_metrics
from cropseg_inference.encoding import MaskEncoding, Output, SegmentationResult, render, result_headers
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings

router = APIRouter(prefix="/api/v1", tags=["segmentation"])

IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image (PNG, JPEG or TIFF; recognised from its content) as the raw body, "
        "or as the `file` field of a multipart form.",
        "content": {
            **{media: _BINARY for media in (*IMAGE_TYPES, "application/octet-stream")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The mask (`output=mask`, single-channel PNG, 255 = vegetation, same size as the "
        "input), the overlay (`output=overlay`, RGB PNG) or the JSON summary (`output=json`). "
        "Headers carry the vegetation fraction, size, model and per-stage timings (Server-Timing).",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": SegmentationResult.model_json_schema(),
                "example": {
                    "width": 480,
                    "height": 360,
                    "vegetation_fraction": 0.13724,
                    "threshold": 0.55,
                    "tiles": 1,
                    "model": {"name": "cropseg-unet", "version": "1.0.0"},
                    "timings_ms": {
                        "decode": 3.9,
                        "preprocess": 0.03,
                        "queue": 0.05,
                        "infer": 55.2,
                        "postprocess": 0.3,
                    },
                },
            },
        },
    },
    **error_responses(400, 413, 415, 422, 503),
}


@router.post(
    "/segment",
    summary="Segment vegetation in an image",
    response_class=Response,
    responses=RESPONSES,
    openapi_extra=REQUEST_BODY,
)
async def segment(
    request: Request,
    engine: Annotated[SegmentationEngine, Depends(get_engine)],
    metrics: Annotated[InferenceMetrics, Depends(get_metrics)],
    settings: Annotated[InferenceSettings, Depends(get_app_settings)],
    threshold: Annotated[
        float | None,
        Query(ge=0, le=1, description="Probability above which a pixel is vegetation; default: the model's"),
    ] = None,
    output: Annotated[Output, Query(description="What to return")] = "mask",
    mask_encoding: Annotated[
        MaskEncoding,
        Query(description="How `output=json` carries the mask: PNG base64, COCO RLE, or not at all"),
    ] = "png",
) -> Response:
    try:
        data = await read_upload(request, settings.image_limits.max_bytes, accepted=IMAGE_TYPES)
        started = time.perf_counter()
        decoded = await run_in_threadpool(decode_image, data, settings.image_limits)
        decode_s = time.perf_counter() - started
        segmentation = await engine.segment(decoded.pixels, threshold)
        segmentation.timings = {"decode": decode_s, **segmentation.timings}
        started = time.perf_counter()
        body, media_type = await run_in_threadpool(
            render, segmentation, decoded.pixels, engine.info, output, mask_encoding
        )
        segmentation.timings["encode"] = time.perf_counter() - started
    except Exception:
        metrics.segmentation_result.labels("failure").inc()
        raise
    metrics.observe(segmentation.timings, segmentation.vegetation_fraction)
    return Response(body, media_type=media_type, headers=result_headers(segmentation, engine.info))
