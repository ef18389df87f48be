"""Service info, liveness and readiness."""

from __future__ import annotations

import platform

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cropseg_core.store import StoreError
from cropseg_core.web.server import dependency_versions
from cropseg_drift import SERVICE_NAME

router = APIRouter(tags=["service"])

DEPENDENCIES = ("cropseg-drift", "cropseg-core", "alibi-detect", "scipy", "scikit-learn", "numpy", "fastapi")


class ServiceInfo(BaseModel):
    service: str
    version: str
    python: str
    engine: str
    store: str
    reference: dict[str, object]
    run_backend: str
    dependencies: dict[str, str]


@router.get("/api/v1/info", response_model=ServiceInfo)
def info(request: Request) -> ServiceInfo:
    """Versions, engine, reference profile and where runs execute."""
    state = request.app.state
    versions = dependency_versions(*DEPENDENCIES)
    return ServiceInfo(
        service=SERVICE_NAME,
        version=versions["cropseg-drift"],
        python=platform.python_version(),
        engine=state.settings.engine,
        store=state.store.describe(),
        reference={"images": len(state.profile.image_names), **state.profile.meta},
        run_backend=state.launcher.backend,
        dependencies=versions,
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Readiness: the reference profile is loaded and the store answers."""
    try:
        request.app.state.store.list_blobs("drift/reports/", limit=1)
    except StoreError as e:
        return JSONResponse({"status": "not ready", "checks": {"store": str(e)}}, status_code=503)
    return JSONResponse({"status": "ready", "checks": {"store": "ok", "reference": "ok"}})
