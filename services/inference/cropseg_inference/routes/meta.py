"""Model description, service info and readiness checks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from cropseg_core.bands import MODEL_BANDS
from cropseg_core.segmenter import INPUT_NAME, OUTPUT_NAME
from cropseg_core.web.errors import error_responses
from cropseg_core.web.service import ReadinessCheck, ServiceInfo, Spec
from cropseg_inference.deps import Engine, Settings
from cropseg_inference.engine import SegmentationEngine

router = APIRouter(tags=["service"])

DEPENDENCIES = ("cropseg-core", "onnxruntime", "numpy", "pillow", "fastapi", "uvicorn")


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 = any size")
    description: str


class ModelDescription(BaseModel):
    name: str
    version: str
    sha256: str
    threshold: float = Field(description="Default probability threshold, calibrated on validation data")
    input: TensorSpec
    output: TensorSpec
    tile_size: int
    tile_overlap: int
    working_gsd_mm: float = Field(description="Ground sampling distance the model works best at (gsd_mm)")
    auto_leaf_px: float = Field(description="Automatic working resolution: typical leaf width aimed at, px")
    metadata: dict[str, str] = Field(description="Metadata stored in the ONNX file")
    metrics: dict[str, Any] | None = Field(
        description="The model card's metrics.json (null when not shipped)"
    )


class InferenceInfo(ServiceInfo):
    model: dict[str, str]


@router.get("/api/v1/model", response_model=ModelDescription, responses=error_responses(503))
def model(request: Request, engine: Engine, settings: Settings) -> ModelDescription:
    """The served model: identity, tensor layout, tiling and the evaluation from its model card."""
    info = engine.info
    return ModelDescription(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        threshold=info.threshold,
        input=TensorSpec(
            name=INPUT_NAME,
            datatype="UINT8",
            shape=[-1, -1, -1, len(MODEL_BANDS)],
            description="bands red, green, blue, NIR (0 where the layout lacks one), NHWC, any height/width; "
            "the service maps the declared layout to them (GET /api/v1/layouts)",
        ),
        output=TensorSpec(
            name=OUTPUT_NAME,
            datatype="FP32",
            shape=[-1, 1, -1, -1],
            description="vegetation probability per pixel",
        ),
        tile_size=settings.tile_size,
        tile_overlap=settings.tile_overlap,
        working_gsd_mm=info.working_gsd_mm,
        auto_leaf_px=settings.auto_leaf_px,
        metadata=info.metadata,
        metrics=request.app.state.model_card,
    )


@router.get("/api/v1/info", response_model=InferenceInfo, responses=error_responses(503))
def info(engine: Engine, spec: Spec) -> InferenceInfo:
    """Service, model and dependency versions (the seed's ``GET /``)."""
    model = {"name": engine.info.name, "version": engine.info.version, "sha256": engine.info.sha256}
    return InferenceInfo.model_validate(spec.info(model=model))


async def readiness(request: Request) -> dict[str, ReadinessCheck]:
    """Ready once the model is loaded and warmed up, until the service starts shutting down."""
    engine: SegmentationEngine = request.app.state.engine
    if engine.ready:
        return {"model": ReadinessCheck(status="ok", detail="loaded and warmed up")}
    return {"model": ReadinessCheck(status="failed", detail="loading, warming up or shutting down")}
