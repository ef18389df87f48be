"""How a segmentation leaves the service: PNG mask, overlay, JSON with PNG base64 or RLE, or a
TIFF mask carrying the upload's GeoTIFF georeference."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from cropseg_core.contracts import SegmentationHeaders
from cropseg_core.geotiff import Georeference, encode_tiff
from cropseg_core.masks import encode_png, overlay
from cropseg_core.pipeline import Segmentation
from cropseg_core.segmenter import ModelInfo

Output = Literal["mask", "overlay", "json", "geotiff"]
MaskEncoding = Literal["png", "rle", "none"]
# Responses are encoded on the request path: level 3 takes 1.3 ms for a 360x480 mask where
# the default 6 takes 2.2 ms, for 25 % more bytes (measured with Pillow 10.4).
PNG_LEVEL = 3


def rle_encode(mask: np.ndarray) -> list[int]:
    """COCO-style uncompressed RLE: alternating run lengths of 0 and non-0 pixels in
    column-major order, starting with a (possibly empty) run of 0."""
    flat = mask.T.ravel() > 0
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size])))
    return ([0] if flat[0] else []) + runs.tolist()


def rle_decode(counts: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`rle_encode`: a (height, width) uint8 mask, 255 = vegetation."""
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 255
    flat = np.repeat(values, counts)
    if flat.size != height * width:
        raise ValueError(f"run lengths add up to {flat.size} pixels, expected {height * width}")
    return flat.reshape(width, height).T.copy()


class ModelRef(BaseModel):
    name: str
    version: str


class EncodedMask(BaseModel):
    encoding: Literal["png_base64", "rle"]
    size: tuple[int, int] = Field(description="[height, width]")
    data: str | None = Field(default=None, description="PNG bytes, base64 (encoding png_base64)")
    counts: list[int] | None = Field(
        default=None,
        description="COCO uncompressed RLE, column-major, starting with background (encoding rle)",
    )


class SegmentationResult(BaseModel):
    width: int
    height: int
    vegetation_fraction: float = Field(description="Share of pixels predicted as vegetation, 0..1")
    threshold: float
    tiles: int = Field(description="Model passes the image took (1 unless larger than the tile size)")
    layout: str = Field(description="Sensor layout the image was read in (see GET /api/v1/layouts)")
    working_scale: float = Field(description="Factor the image was resized by for the model (1 = full size)")
    model: ModelRef
    timings_ms: dict[str, float]
    confidence: dict[str, list[int]] = Field(
        description="Pixels by predicted probability in 32 bins even in logit space (-8..8), for the "
        "pixels called soil and plant: what the drift monitor's label-free IoU estimate reads"
    )
    mask: EncodedMask | None = None


def timings_ms(segmentation: Segmentation) -> dict[str, float]:
    return {stage: round(seconds * 1000, 3) for stage, seconds in segmentation.timings.items()}


def result_json(
    segmentation: Segmentation, info: ModelInfo, mask_encoding: MaskEncoding
) -> SegmentationResult:
    mask = None
    size = (segmentation.height, segmentation.width)
    if mask_encoding == "png":
        mask = EncodedMask(
            encoding="png_base64",
            size=size,
            data=base64.b64encode(encode_png(segmentation.mask, PNG_LEVEL)).decode(),
        )
    elif mask_encoding == "rle":
        mask = EncodedMask(encoding="rle", size=size, counts=rle_encode(segmentation.mask))
    return SegmentationResult(
        width=segmentation.width,
        height=segmentation.height,
        vegetation_fraction=round(segmentation.vegetation_fraction, 6),
        threshold=segmentation.threshold,
        tiles=segmentation.tiles,
        layout=segmentation.layout,
        working_scale=round(segmentation.scale, 6),
        model=ModelRef(name=info.name, version=info.version),
        timings_ms=timings_ms(segmentation),
        confidence=dict(zip(("soil", "plant"), segmentation.confidence.tolist(), strict=True)),
        mask=mask,
    )


def render(
    segmentation: Segmentation,
    pixels: np.ndarray | None,
    info: ModelInfo,
    output: Output,
    mask_encoding: MaskEncoding,
    georeference: Georeference | None = None,
) -> tuple[bytes, str]:
    """Response body and media type for the requested ``output`` (``pixels``: the RGB picture
    the overlay is drawn on, in place; ``georeference``: the upload's, for ``geotiff``)."""
    if output == "mask":
        return encode_png(segmentation.mask, PNG_LEVEL), "image/png"
    if output == "geotiff":
        return encode_tiff(segmentation.mask, georeference), "image/tiff"
    if output == "overlay":
        assert pixels is not None
        return encode_png(overlay(pixels, segmentation.mask, in_place=True), PNG_LEVEL), "image/png"
    return result_json(segmentation, info, mask_encoding).model_dump_json(
        exclude_none=True
    ).encode(), "application/json"


def result_headers(segmentation: Segmentation, info: ModelInfo) -> dict[str, str]:
    """The ``X-`` headers storage reads (:class:`cropseg_core.contracts.SegmentationHeaders`) and
    the stages' durations."""
    timing = ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in timings_ms(segmentation).items())
    contract = SegmentationHeaders(
        vegetation_fraction=segmentation.vegetation_fraction,
        image_width=segmentation.width,
        image_height=segmentation.height,
        threshold=segmentation.threshold,
        tiles=segmentation.tiles,
        layout=segmentation.layout,
        working_scale=segmentation.scale,
        model_name=info.name,
        model_version=info.version,
        confidence=segmentation.confidence,
    )
    return {**contract.to_headers(), "Server-Timing": timing}
