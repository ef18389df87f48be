"""Service info, liveness, readiness and the status page's data."""

from __future__ import annotations

import asyncio
import platform
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cropseg_core.web.server import dependency_versions
from cropseg_storage import SERVICE_NAME
from cropseg_storage.deps import Inference, Metrics, Settings
from cropseg_storage.status import StatusMonitor, StatusSummary

router = APIRouter(tags=["service"])

# Inside the kubelet's default 1 s probe timeout: a dependency that hangs must not fail the probe.
DEPENDENCY_TIMEOUT_S = 0.5

DEPENDENCIES = ("cropseg-storage", "cropseg-core", "numpy", "pillow", "fastapi", "uvicorn", "httpx", "boto3")


class ServiceInfo(BaseModel):
    service: str
    version: str
    python: str
    store: str
    inference_url: str
    drift_url: str
    authentication: bool
    dependencies: dict[str, str]


class Health(BaseModel):
    status: str


class ReadinessCheck(BaseModel):
    status: Literal["ok", "degraded", "failed"]
    """failed: storage cannot serve; degraded: a dependency is down and only what needs it fails."""
    detail: str


ReadinessState = Literal["ready", "degraded", "not ready"]


class Readiness(BaseModel):
    status: ReadinessState
    """ready (200): all is well; degraded (200): storage serves the UI, uploads and reads, and
    segmentations answer 503 until inference is back; not ready (503): the store is unusable."""
    checks: dict[str, ReadinessCheck]


def get_status_monitor(request: Request) -> StatusMonitor:
    monitor: StatusMonitor = request.app.state.status_monitor
    return monitor


@router.get("/api/v1/info", response_model=ServiceInfo)
def info(request: Request, settings: Settings) -> ServiceInfo:
    """Service, storage backend and dependency versions (the seed's ``GET /``)."""
    versions = dependency_versions(*DEPENDENCIES)
    return ServiceInfo(
        service=SERVICE_NAME,
        version=versions["cropseg-storage"],
        python=platform.python_version(),
        store=request.app.state.repository.store.describe(),
        inference_url=str(settings.inference_url),
        drift_url=str(settings.drift_url),
        authentication=settings.api_token is not None,
        dependencies=versions,
    )


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request, inference: Inference, metrics: Metrics) -> JSONResponse:
    """Readiness: the store takes writes. Inference is a dependency, not a condition: while it is
    down storage stays in service and says so here and in ``cropseg_storage_dependency_up``."""
    store_problem, inference_ready = await asyncio.gather(
        request.app.state.check_store(), inference.ready(timeout_s=DEPENDENCY_TIMEOUT_S)
    )
    metrics.dependency_up.labels("inference").set(1 if inference_ready else 0)
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
    status: ReadinessState = "not ready" if store_problem else "ready" if inference_ready else "degraded"
    body = Readiness(status=status, checks={"store": store, "inference": dependency})
    return JSONResponse(body.model_dump(), status_code=503 if store_problem else 200)


@router.get("/api/v1/status", response_model=StatusSummary)
def status(monitor: Annotated[StatusMonitor, Depends(get_status_monitor)]) -> StatusSummary:
    """Each service's state from periodic readiness checks, daily uptime and incidents."""
    return monitor.summary()
