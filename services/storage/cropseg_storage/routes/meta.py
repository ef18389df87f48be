"""Service info, readiness checks and the status page's data."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import Field

from cropseg_core.web.service import ReadinessCheck, ServiceInfo, Spec
from cropseg_storage.deps import Monitor, Settings
from cropseg_storage.inference_client import InferenceClient
from cropseg_storage.status import StatusSummary

router = APIRouter(tags=["service"])

# Inside the kubelet's default 1 s probe timeout: a dependency that hangs must not fail the probe.
DEPENDENCY_TIMEOUT_S = 0.5

DEPENDENCIES = ("cropseg-core", "numpy", "pillow", "fastapi", "uvicorn", "httpx", "boto3")


class StorageInfo(ServiceInfo):
    store: str
    inference_url: str
    drift_url: str
    authentication: bool
    map_tiles: str | None = Field(
        description="The fields' basemap: an XYZ tile URL template, or null for none"
    )
    map_attribution: str = Field(description="The basemap's credit")


@router.get("/api/v1/info", response_model=StorageInfo)
def info(request: Request, settings: Settings, spec: Spec) -> StorageInfo:
    """Service, storage backend and dependency versions (the seed's ``GET /``)."""
    return StorageInfo.model_validate(
        spec.info(
            store=request.app.state.repository.store.describe(),
            inference_url=str(settings.inference_url),
            drift_url=str(settings.drift_url),
            authentication=settings.api_token is not None,
            map_tiles=settings.fields.map_tiles,
            map_attribution=settings.fields.map_attribution,
        )
    )


async def readiness(request: Request) -> dict[str, ReadinessCheck]:
    """The store takes writes. Inference is a dependency, not a condition: while it is down
    storage stays in service (degraded) and says so here and in ``cropseg_storage_dependency_up``."""
    inference: InferenceClient = request.app.state.inference
    store_problem, inference_ready = await asyncio.gather(
        request.app.state.check_store(), inference.ready(timeout_s=DEPENDENCY_TIMEOUT_S)
    )
    request.app.state.metrics.dependency_up.labels("inference").set(1 if inference_ready else 0)
    store = (
        ReadinessCheck(status="failed", detail=store_problem)
        if store_problem
        else ReadinessCheck(status="ok", detail="writable")
    )
    dependency = (
        ReadinessCheck(status="ok", detail=f"ready at {inference.base_url}")
        if inference_ready
        else ReadinessCheck(
            status="degraded",
            detail=f"not ready at {inference.base_url}: segmentations answer 503 until it is",
        )
    )
    return {"store": store, "inference": dependency}


@router.get("/api/v1/status", response_model=StatusSummary)
def status(monitor: Monitor) -> StatusSummary:
    """Each service's state from periodic readiness checks, daily uptime and incidents."""
    return monitor.summary()
