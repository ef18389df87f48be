"""Service info, liveness, readiness and the status page's data."""

from __future__ import annotations

import platform
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cropseg_core.web.server import dependency_versions
from cropseg_storage import SERVICE_NAME
from cropseg_storage.deps import Inference, Settings
from cropseg_storage.status import StatusMonitor, StatusSummary

router = APIRouter(tags=["service"])

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


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


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
async def readyz(request: Request, inference: Inference) -> JSONResponse:
    """Readiness: the store takes writes and the inference service is reachable and ready."""
    store_problem = await request.app.state.check_store()
    checks = {
        "store": store_problem or "ok",
        "inference": "ok" if await inference.ready() else f"not ready at {inference.base_url}",
    }
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/api/v1/status", response_model=StatusSummary)
def status(monitor: Annotated[StatusMonitor, Depends(get_status_monitor)]) -> StatusSummary:
    """Each service's state from periodic readiness checks, daily uptime and incidents."""
    return monitor.summary()
