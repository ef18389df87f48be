"""Model description, service info, liveness and readiness."""

from __future__ import annotations

import platform
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cropseg_core.bands import MODEL_BANDS
from cropseg_core.segmenter import INPUT_NAME, OUTPUT_NAME
from cropseg_core.web.errors import error_responses
from cropseg_core.web.server import dependency_versions
from cropseg_inference import SERVICE_NAME
from cropseg_inference.deps import get_app_settings, get_engine
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.settings import InferenceSettings

router = APIRouter(tags=["service"])

DEPENDENCIES = ("cropseg-inference", "cropseg-core", "onnxruntime", "numpy", "pillow", "fastapi", "uvicorn")


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


class ServiceInfo(BaseModel):
    service: str
    version: str
    python: str
    model: dict[str, str]
    dependencies: dict[str, str]


class Health(BaseModel):
    status: str


@router.get("/api/v1/model", response_model=ModelDescription, responses=error_responses(503))
def model(
    request: Request,
    engine: Annotated[SegmentationEngine, Depends(get_engine)],
    settings: Annotated[InferenceSettings, Depends(get_app_settings)],
) -> ModelDescription:
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


@router.get("/api/v1/info", response_model=ServiceInfo, responses=error_responses(503))
def info(engine: Annotated[SegmentationEngine, Depends(get_engine)]) -> ServiceInfo:
    """Service, model and dependency versions (the seed's ``GET /``)."""
    versions = dependency_versions(*DEPENDENCIES)
    return ServiceInfo(
        service=SERVICE_NAME,
        version=versions["cropseg-inference"],
        python=platform.python_version(),
        model={"name": engine.info.name, "version": engine.info.version, "sha256": engine.info.sha256},
        dependencies=versions,
    )


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(engine: Annotated[SegmentationEngine, Depends(get_engine)]) -> JSONResponse:
    """Readiness: the model is loaded and warmed up, and the service is not shutting down."""
    ready = engine.ready
    return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)
