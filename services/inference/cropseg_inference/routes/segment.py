"""``POST /api/v1/segment``: an image in, its vegetation mask out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import LAYOUTS, get_layout, picture
from cropseg_core.contracts import OPENAPI_HEADERS, THRESHOLD_HELP, Header, Threshold
from cropseg_core.imaging import decode_channels
from cropseg_core.pipeline import GSD_RANGE_MM, MIN_SCALE
from cropseg_core.web.bodies import read_upload
from cropseg_core.web.errors import error_responses
from cropseg_core.web.limits import image_memory
from cropseg_inference.deps import Engine, Metrics, Settings
from cropseg_inference.encoding import MaskEncoding, Output, SegmentationResult, render, result_headers

router = APIRouter(prefix="/api/v1", tags=["segmentation"])
LAYOUT_HELP = "Sensor layout of the image's channels: " + "; ".join(
    f"`{layout.name}` {layout.description}" for layout in LAYOUTS.values()
)

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
        "input), the overlay (`output=overlay`, RGB PNG), the JSON summary (`output=json`) or the mask "
        "as a TIFF carrying a GeoTIFF upload's georeference (`output=geotiff`; `X-Georeferenced` says "
        "whether the upload had one). "
        "Headers carry the vegetation fraction, size, model and per-stage timings (Server-Timing).",
        "headers": OPENAPI_HEADERS,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": SegmentationResult.model_json_schema(),
                "example": {
                    "width": 480,
                    "height": 360,
                    "vegetation_fraction": 0.13724,
                    "threshold": 0.55,
                    "tiles": 1,
                    "layout": "rgb",
                    "working_scale": 1.0,
                    "model": {"name": "cropseg-unet", "version": "2.0.0"},
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
    engine: Engine,
    metrics: Metrics,
    settings: Settings,
    threshold: Annotated[Threshold | None, Query(description=THRESHOLD_HELP)] = None,
    output: Annotated[Output, Query(description="What to return")] = "mask",
    mask_encoding: Annotated[
        MaskEncoding,
        Query(description="How `output=json` carries the mask: PNG base64, COCO RLE, or not at all"),
    ] = "png",
    layout: Annotated[str, Query(description=LAYOUT_HELP)] = "rgb",
    gsd_mm: Annotated[
        float | None,
        Query(
            description="Ground sampling distance in mm per pixel "
            f"({GSD_RANGE_MM[0]:g}-{GSD_RANGE_MM[1]:g}): finer images are segmented scaled to the "
            "model's working GSD; default: automatic"
        ),
    ] = None,
    scale: Annotated[
        float | None,
        Query(description=f"Working scale ({MIN_SCALE:g}-1) instead of gsd_mm; default: automatic"),
    ] = None,
) -> Response:
    with metrics.counting_failures():
        sensor = get_layout(layout)
        engine.admit()  # shed before the body is read and decoded
        data = await read_upload(request, settings.image_limits.max_bytes, accepted=IMAGE_TYPES)
        cost = "segment-overlay" if output == "overlay" else "segment"
        async with image_memory(request, data, cost, settings.image_limits):
            started = time.perf_counter()
            decoded = await run_in_threadpool(decode_channels, data, settings.image_limits)
            decode_s = time.perf_counter() - started
            segmentation = await engine.segment(decoded.pixels, sensor, threshold, gsd_mm=gsd_mm, scale=scale)
            segmentation.timings = {"decode": decode_s, **segmentation.timings}
            started = time.perf_counter()
            drawn_on = picture(decoded.pixels, sensor) if output == "overlay" else None
            georeference = decoded.georeference
            del decoded, data  # a 40 MP image: 120 MB less while the answer is encoded
            body, media_type = await run_in_threadpool(
                render, segmentation, drawn_on, engine.info, output, mask_encoding, georeference
            )
            segmentation.timings["encode"] = time.perf_counter() - started
    metrics.observe(segmentation.timings, segmentation.vegetation_fraction)
    headers = result_headers(segmentation, engine.info)
    if output == "geotiff":
        headers[Header.GEOREFERENCED] = "true" if georeference else "false"
        if georeference is None:  # still a mask, but it cannot be placed on a map
            headers["Warning"] = '299 - "the upload has no GeoTIFF georeference: the mask has none either"'
    return Response(body, media_type=media_type, headers=headers)
