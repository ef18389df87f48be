"""Segmentation through the inference service, stored masks and overlays, evaluation."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cropseg_core.bands import get_layout
from cropseg_core.contracts import THRESHOLD_HELP, Header, Threshold
from cropseg_core.geotiff import encode_tiff, georeference_of
from cropseg_core.imaging import decode_channels
from cropseg_core.masks import overlay_colour, score, vegetation_fraction
from cropseg_core.repository import MODEL_VERSION, ImageRecord, ImageRepository, SegmentationRecord
from cropseg_core.web.auth import WRITE
from cropseg_core.web.errors import error_responses
from cropseg_core.web.limits import hold_memory
from cropseg_storage.deps import Inference, Metrics, Repository, Settings
from cropseg_storage.inference_client import (
    InferenceFailedError,
    InferenceRejectedError,
    InferenceTimeoutError,
    InferenceUnavailableError,
)
from cropseg_storage.routes.images import made_once

router = APIRouter(prefix="/api/v1/images/{image_id}", tags=["segmentation"])

ModelVersion = Annotated[
    str | None,
    Query(
        pattern=f"^{MODEL_VERSION.pattern}$", description="Model version (default: the newest segmentation)"
    ),
]
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}
OUTCOMES: dict[type[Exception], str] = {
    InferenceUnavailableError: "unavailable",
    InferenceTimeoutError: "timeout",
    InferenceRejectedError: "rejected",
    InferenceFailedError: "failed",
}


SINGLE_BAND_WARNING = (
    "This image has a single band (grey: its channels are equal), so it cannot be read as true colour: "
    "without colour the model finds (almost) no vegetation, whatever grows there. Segment the colour "
    "photo, or a multispectral file in its sensor layout."
)
GREY_TOLERANCE = 2
"""Levels by which a grey picture's channels may differ (its JPEG thumbnail's rounding)."""


class SegmentationOut(SegmentationRecord):
    links: dict[str, str]
    overlay_colour: str = Field(
        description="Colour of the vegetation tint in the overlay (#rrggbb), chosen for the image's layout",
        examples=["#ff00ff"],
    )
    warnings: list[str] = Field(
        default_factory=list, description="Why the result may not mean what it seems, in plain words"
    )


class SegmentationList(BaseModel):
    items: list[SegmentationOut] = Field(description="One per model version, newest first")


class Evaluation(BaseModel):
    image_id: str
    model_version: str
    pixel_accuracy: float = Field(description="Share of pixels where mask and label agree")
    iou: float = Field(description="Intersection over union of vegetation (1 when both are empty)")
    vegetation_fraction_predicted: float
    vegetation_fraction_label: float
    pixels: int


def _out(record: SegmentationRecord, image: ImageRecord, warnings: list[str]) -> SegmentationOut:
    base = f"/api/v1/images/{record.image_id}"
    query = f"?model_version={record.model_version}"
    links = {
        "mask": f"{base}/mask{query}",
        "overlay": f"{base}/overlay{query}",
        "evaluation": f"{base}/evaluation{query}",
    }
    colour = "#{:02x}{:02x}{:02x}".format(*overlay_colour(get_layout(image.layout)))
    return SegmentationOut(**record.model_dump(), links=links, overlay_colour=colour, warnings=warnings)


def warnings_for(request: Request, repository: ImageRepository, image: ImageRecord, size: int) -> list[str]:
    """What to say beside any segmentation of ``image``: a grey (single-band) picture, judged on
    its thumbnail (small, and kept once made). An all-black tile is out of field, not grey."""
    if image.black_fraction is not None and image.black_fraction >= 0.99:
        return []
    jpeg = made_once(request, image, partial(repository.thumbnail, image, size))
    with Image.open(io.BytesIO(jpeg)) as thumbnail:
        pixels = np.asarray(thumbnail.convert("RGB")).astype(np.int16)
    grey = int(np.ptp(pixels, axis=2).max()) <= GREY_TOLERANCE
    return [SINGLE_BAND_WARNING] if grey else []


@router.post(
    "/segmentation",
    status_code=201,
    response_model=SegmentationOut,
    dependencies=WRITE,
    responses=error_responses(400, 401, 403, 404, 413, 422, 502, 503, 504),
)
async def segment(
    request: Request,
    image_id: str,
    repository: Repository,
    inference: Inference,
    metrics: Metrics,
    settings: Settings,
    threshold: Annotated[Threshold | None, Query(description=THRESHOLD_HELP)] = None,
    gsd_mm: Annotated[
        float | None, Query(gt=0, description="Ground sampling distance, mm per pixel (default: automatic)")
    ] = None,
    scale: Annotated[float | None, Query(gt=0, le=1, description="Working scale instead of gsd_mm")] = None,
) -> JSONResponse:
    """Segment the stored image with the inference service, in the image's declared layout;
    store the mask and a prediction record."""
    record = await run_in_threadpool(repository.get, image_id)
    data = await run_in_threadpool(repository.image_bytes, record)
    try:
        result = await inference.segment(
            data, record.media_type, threshold, layout=record.layout, gsd_mm=gsd_mm, scale=scale
        )
    except (
        InferenceUnavailableError,
        InferenceTimeoutError,
        InferenceRejectedError,
        InferenceFailedError,
    ) as e:
        metrics.inference_requests.labels(OUTCOMES[type(e)]).inc()
        raise
    metrics.inference_requests.labels("success").inc()
    metrics.inference_duration.observe(result.latency_s)
    segmentation = SegmentationRecord(
        image_id=record.id,
        source=record.source,
        model_name=result.model_name,
        model_version=result.model_version,
        threshold=result.threshold,
        vegetation_fraction=result.vegetation_fraction,
        latency_ms=round(result.latency_s * 1000, 2),
        layout=result.layout,
        working_scale=result.working_scale,
        confidence=result.confidence,
        created_at=datetime.now(UTC),
    )
    await run_in_threadpool(repository.save_segmentation, segmentation, result.mask_png)
    warnings = await run_in_threadpool(warnings_for, request, repository, record, settings.thumbnail_size)
    body = _out(segmentation, record, warnings)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=201, headers={"Location": body.links["mask"]}
    )


@router.get("/segmentations", response_model=SegmentationList, responses=error_responses(400, 404))
def segmentations(
    request: Request, image_id: str, repository: Repository, settings: Settings
) -> SegmentationList:
    """The stored segmentations of the image, one per model version."""
    image = repository.get(image_id)
    stored = repository.segmentations(image_id)
    warnings = warnings_for(request, repository, image, settings.thumbnail_size) if stored else []
    return SegmentationList(items=[_out(s, image, warnings) for s in stored])


@router.get(
    "/mask",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/tiff": {}}}, **error_responses(400, 404, 409, 422)},
)
def mask(
    request: Request,
    image_id: str,
    repository: Repository,
    model_version: ModelVersion = None,
    encoding: Annotated[
        Literal["png", "geotiff"],
        Query(alias="format", description="png, or geotiff: a TIFF with a GeoTIFF upload's georeference"),
    ] = "png",
) -> Response:
    """The predicted mask as a PNG (255 = vegetation), or as a TIFF placed where a GeoTIFF upload
    lies (``X-Georeferenced`` says whether the upload had a georeference)."""
    segmentation, png = repository.mask(image_id, model_version)
    headers = _model_headers(segmentation)
    if encoding == "png":
        return Response(png, media_type="image/png", headers=headers)
    record = repository.get(image_id)
    with hold_memory(request, "mask", record.width * record.height):
        georeference = georeference_of(repository.image_bytes(record))
        tiff = encode_tiff(decode_channels(png).pixels[..., 0], georeference)
    headers[Header.GEOREFERENCED] = "true" if georeference else "false"
    return Response(tiff, media_type="image/tiff", headers=headers)


@router.get(
    "/overlay", response_class=Response, responses={**PNG_RESPONSE, **error_responses(400, 404, 409, 422)}
)
def overlay_image(
    request: Request, image_id: str, repository: Repository, model_version: ModelVersion = None
) -> Response:
    """The image with predicted vegetation tinted (magenta on true colour, yellow on a false-colour
    layout: ``overlay_colour`` of the segmentation), made once, then served as stored."""
    segmentation, png = repository.overlay(image_id, model_version, make=False)
    if png is None:
        record = repository.get(image_id)
        with hold_memory(request, "overlay", record.width * record.height):
            segmentation, png = repository.overlay(image_id, model_version)
    return Response(png, media_type="image/png", headers=_model_headers(segmentation))


@router.get("/evaluation", response_model=Evaluation, responses=error_responses(400, 404, 409, 422))
def evaluation(
    request: Request, image_id: str, repository: Repository, model_version: ModelVersion = None
) -> Evaluation:
    """Pixel accuracy and IoU of the stored mask against the label (the seed's ``/metrics``)."""
    record = repository.get(image_id)
    with hold_memory(request, "evaluation", record.width * record.height):
        segmentation, predicted, label = repository.mask_and_label(image_id, model_version)
        result = score(predicted, label)
        return Evaluation(
            image_id=image_id,
            model_version=segmentation.model_version,
            pixel_accuracy=result.pixel_accuracy,
            iou=result.iou,
            vegetation_fraction_predicted=vegetation_fraction(predicted),
            vegetation_fraction_label=vegetation_fraction(label),
            pixels=int(np.prod(label.shape)),
        )


def _model_headers(segmentation: SegmentationRecord) -> dict[str, str]:
    return {
        Header.MODEL_NAME: segmentation.model_name,
        Header.MODEL_VERSION: segmentation.model_version,
        Header.VEGETATION_FRACTION: f"{segmentation.vegetation_fraction:.6f}",
        "Cache-Control": "no-cache",
    }
