"""What one cropseg service reads from another, typed once for both sides.

* :class:`SegmentationHeaders` -- inference's answer to ``POST /api/v1/segment`` travels in
  ``X-`` headers beside the mask; inference writes them with :meth:`SegmentationHeaders.to_headers`
  and storage reads them with :meth:`SegmentationHeaders.from_headers`, so a header name is
  spelled once.
* :class:`DriftReport` -- a drift run's ``report.json``, served by drift-monitor's report routes
  (its schema in their /docs) and read by storage's web UI. Its field names are the ones the
  stored reports have always had; what is detector-specific stays a plain mapping, shaped as
  Alibi Detect shapes it, and fields that later versions added are optional, so every stored
  report validates.
* :data:`Threshold` -- the threshold a client may ask either service for (query parameter, OIP
  parameter, CLI): a probability from 0 to 1; none means the model's own.

Plain pydantic and dataclasses: no web framework here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cropseg_core.confidence import decode_counts, encode_counts
from cropseg_core.errors import ClientError

# The inference -> storage answer

THRESHOLD_HELP = (
    "Probability from 0 to 1 above which a pixel is vegetation (0: every pixel, 1: none); "
    "default: the model's calibrated one"
)
Threshold = Annotated[float, Field(ge=0, le=1, description=THRESHOLD_HELP)]
"""A requested threshold, as every API and CLI accepts it."""


def check_threshold(value: float | None, name: str = "threshold") -> float | None:
    """The same rule where a threshold arrives untyped (Open Inference Protocol parameters)."""
    if value is not None and not 0 <= value <= 1:
        raise ClientError(f"{name} must be a probability from 0 to 1, got {value}")
    return value


class Header:
    """The ``X-`` headers of a segmentation answer (HTTP header names are case-insensitive)."""

    VEGETATION_FRACTION = "X-Vegetation-Fraction"
    IMAGE_WIDTH = "X-Image-Width"
    IMAGE_HEIGHT = "X-Image-Height"
    THRESHOLD = "X-Threshold"
    TILES = "X-Tiles"
    LAYOUT = "X-Layout"
    WORKING_SCALE = "X-Working-Scale"
    MODEL_NAME = "X-Model-Name"
    MODEL_VERSION = "X-Model-Version"
    CONFIDENCE = "X-Confidence"
    GEOREFERENCED = "X-Georeferenced"


_DESCRIBED: tuple[tuple[str, str, str], ...] = (
    (Header.VEGETATION_FRACTION, "number", "Share of the image's pixels that are vegetation (6 decimals)"),
    (Header.IMAGE_WIDTH, "integer", "Width of the image and the mask, pixels"),
    (Header.IMAGE_HEIGHT, "integer", "Height of the image and the mask, pixels"),
    (Header.THRESHOLD, "number", "Probability above which a pixel is vegetation"),
    (Header.TILES, "integer", "Tiles the image was segmented in"),
    (Header.LAYOUT, "string", "Sensor layout the bands were read as"),
    (Header.WORKING_SCALE, "number", "Scale the image was segmented at (1: full resolution)"),
    (Header.MODEL_NAME, "string", "Model that made the mask"),
    (Header.MODEL_VERSION, "string", "Its version"),
    (Header.CONFIDENCE, "string", "Pixels by predicted probability: soil=n,n,...;plant=n,n,..."),
)
OPENAPI_HEADERS: dict[str, dict[str, Any]] = {
    name: {"description": text, "schema": {"type": kind}} for name, kind, text in _DESCRIBED
}
"""The headers of :class:`SegmentationHeaders` as an OpenAPI response's ``headers``."""


@dataclass(frozen=True)
class SegmentationHeaders:
    """What inference says about a mask it answers with, beside the mask itself."""

    vegetation_fraction: float
    image_width: int
    image_height: int
    threshold: float
    tiles: int
    layout: str
    working_scale: float
    model_name: str
    model_version: str
    confidence: np.ndarray | None = None
    """Pixels by predicted probability, shape (2, BINS) (:mod:`cropseg_core.confidence`); None
    from an inference service without the ``X-Confidence`` header."""

    def to_headers(self) -> dict[str, str]:
        headers = {
            Header.VEGETATION_FRACTION: f"{self.vegetation_fraction:.6f}",
            Header.IMAGE_WIDTH: str(self.image_width),
            Header.IMAGE_HEIGHT: str(self.image_height),
            Header.THRESHOLD: f"{self.threshold:g}",
            Header.TILES: str(self.tiles),
            Header.LAYOUT: self.layout,
            Header.WORKING_SCALE: f"{self.working_scale:.6g}",
            Header.MODEL_NAME: self.model_name,
            Header.MODEL_VERSION: self.model_version,
        }
        if self.confidence is not None:
            headers[Header.CONFIDENCE] = encode_counts(self.confidence)
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SegmentationHeaders:
        """Parse an answer's headers (any case of names: pass httpx's or Starlette's headers, or a
        plain dict); ValueError naming the header when one is missing or malformed."""
        lowered = {name.lower(): value for name, value in headers.items()}

        def text(name: str) -> str:
            try:
                return lowered[name.lower()]
            except KeyError:
                raise ValueError(f"no {name} header") from None

        def number(name: str, kind: type[float] | type[int]) -> Any:
            try:
                return kind(text(name))
            except ValueError as e:
                raise ValueError(f"malformed {name} header: {e}") from e

        confidence = lowered.get(Header.CONFIDENCE.lower())
        return cls(
            vegetation_fraction=number(Header.VEGETATION_FRACTION, float),
            image_width=number(Header.IMAGE_WIDTH, int),
            image_height=number(Header.IMAGE_HEIGHT, int),
            threshold=number(Header.THRESHOLD, float),
            tiles=number(Header.TILES, int),
            layout=text(Header.LAYOUT),
            working_scale=number(Header.WORKING_SCALE, float),
            model_name=text(Header.MODEL_NAME),
            model_version=text(Header.MODEL_VERSION),
            confidence=decode_counts(confidence) if confidence is not None else None,
        )


# The drift report


class _Open(BaseModel):
    """Keeps fields it does not name (a newer or older report's), so a report is served whole."""

    model_config = ConfigDict(extra="allow")


class DriftCheck(_Open):
    """One check's result, shaped as Alibi Detect shapes a detector's ``predict``."""

    meta: dict[str, Any] = Field(
        description="The check: name, label, detector, engine and the sample counts it compared",
        examples=[{"name": "image_properties", "label": "image properties", "detector": "KSDrift",
                   "engine": "alibi", "samples": 50}],
    )  # fmt: skip
    data: dict[str, Any] = Field(
        description="What the detector found: is_drift (null without enough data), status, p_val, "
        "distance, threshold and detector-specific details (per-feature results, importances)",
        examples=[{"is_drift": True, "status": "drift", "p_val": 3.1e-05, "distance": 0.42,
                   "threshold": 0.001, "drifted": ["brightness"]}],
    )  # fmt: skip


class SkippedImage(_Open):
    id: str
    reason: str


class DriftWindow(_Open):
    """Which uploads the run compared with the reference."""

    images: int = Field(description="At most this many of the newest images")
    hours: float | None = Field(description="No older than this many hours (null: any age)")
    source: str = Field(description="Which uploads: upload, sample, ...")
    layout: str | None = Field(default=None, description="The sensor layout checked (reports since layouts)")


class DriftReference(_Open):
    """What the uploads were compared with: the model's training images or chosen uploads."""

    images: int
    model_name: str
    model_version: str
    kind: str | None = Field(default=None, description="training or chosen")
    sources: dict[str, int] | None = Field(default=None, description="Images per source folder")
    text: str | None = Field(default=None, description="The reference in words")


class DriftPerformance(_Open):
    """The label-free IoU estimate of the window's predictions, and the measured IoU of the
    labelled uploads among them."""

    status: str = Field(description="ok, dropped, insufficient_data or unavailable")
    text: str = Field(description="The section in one sentence")
    measured_iou: float | None
    labelled_images: int
    reason: str | None = Field(default=None, description="Why there is no estimate")
    estimated_iou: float | None = None
    expected_iou: float | None = None
    drop: float | None = None
    tolerance: float | None = None
    images: int | None = Field(default=None, description="Predictions with confidence counts")
    temperature: float | None = None
    calibrated_on: list[str] | None = None
    tracking: dict[str, Any] | None = None


class ReportPlot(_Open):
    name: str
    file: str
    url: str


class DriftReport(_Open):
    """A drift run's report (``report.json``): verdict, summary, window, reference, the checks."""

    id: str = Field(examples=["20261127T144100123456Z"])
    created_at: str = Field(description="ISO 8601, UTC", examples=["2026-11-27T14:41:00.123456+00:00"])
    status: Literal["drift", "no_drift", "insufficient_data"]
    summary: str = Field(description="What changed, what it likely means and what to do, in words")
    engine: str = Field(description="alibi or scipy")
    p_value: float = Field(description="The run's significance, split over its checks")
    images: int = Field(description="Images checked")
    predictions: int = Field(description="Prediction records checked")
    skipped: list[SkippedImage] = Field(description="Images that could not be read, and why")
    window: DriftWindow
    reference: DriftReference
    detectors: dict[str, DriftCheck] = Field(
        description="One result per check: grey_histogram, image_properties, dataset, "
        "prediction_vegetation_fraction, prediction_has_vegetation"
    )
    plots: list[ReportPlot]
    links: dict[str, str] = Field(description="self and html")
    duration_s: float
    performance: DriftPerformance | None = Field(default=None, description="Absent in reports before it")
    timings_s: dict[str, float] | None = Field(default=None, description="Seconds per stage of the run")
