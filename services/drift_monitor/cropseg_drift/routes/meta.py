"""Service info and readiness checks."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from cropseg_core.store import BlobStore, StoreError
from cropseg_core.web.service import ReadinessCheck, ServiceInfo, Spec
from cropseg_drift.deps import Launcher, Profile, Settings, Store

router = APIRouter(tags=["service"])

DEPENDENCIES = ("cropseg-core", "alibi-detect", "scipy", "scikit-learn", "numpy", "fastapi")


class DriftInfo(ServiceInfo):
    engine: str
    store: str
    reference: dict[str, object]
    run_backend: str


@router.get("/api/v1/info", response_model=DriftInfo)
def info(spec: Spec, settings: Settings, store: Store, profile: Profile, launcher: Launcher) -> DriftInfo:
    """Versions, engine, reference profile and where runs execute."""
    return DriftInfo.model_validate(
        spec.info(
            engine=settings.engine,
            store=store.describe(),
            reference={"images": len(profile.image_names), **profile.meta},
            run_backend=launcher.backend,
        )
    )


async def readiness(request: Request) -> dict[str, ReadinessCheck]:
    """The reference profile is loaded (start-up stops without it) and the store answers."""
    store: BlobStore = request.app.state.store
    try:
        await run_in_threadpool(store.list_blobs, "drift/reports/", limit=1)
    except StoreError as e:
        return {"store": ReadinessCheck(status="failed", detail=str(e))}
    return {
        "store": ReadinessCheck(status="ok", detail=store.describe()),
        "reference": ReadinessCheck(status="ok", detail="loaded"),
    }
