"""Builds the storage app: settings, store, inference client, routers, web UI, background checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from cropseg_core.contracts import Header
from cropseg_core.fields import FieldCatalogue
from cropseg_core.repository import ImageRepository
from cropseg_core.store import StoreError, open_store
from cropseg_core.web import layouts
from cropseg_core.web.bodies import upload_body_limit
from cropseg_core.web.hygiene import UI_POLICY
from cropseg_core.web.service import ServiceSpec, build_service
from cropseg_storage import SERVICE_NAME, tus
from cropseg_storage.inference_client import InferenceClient
from cropseg_storage.kube_jobs import field_launcher
from cropseg_storage.metrics import StorageMetrics
from cropseg_storage.routes import drift, fields, images, meta, segmentation
from cropseg_storage.seeding import seed_samples
from cropseg_storage.settings import StorageSettings, get_settings
from cropseg_storage.staging import UploadStaging
from cropseg_storage.status import Check, StatusMonitor

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"

DESCRIPTION = """\
The front door of cropseg: stores UAV field images by content, their ground-truth labels and
predicted masks, segments them through the inference service, evaluates masks against labels,
and serves the web UI at `/`.

* `POST /api/v1/images` stores an image (same bytes, same id); `GET /api/v1/images/sample` is the gallery.
* `POST /api/v1/images/{id}/segmentation` segments it; `GET .../evaluation` scores the mask.
* `/api/v1/fields/uploads` takes a whole GeoTIFF orthomosaic (up to 2 GB) with the tus 1.0.0
  resumable-upload protocol (tus-js-client, tuspy); `GET /api/v1/fields` lists the fields.
* Writes need `Authorization: Bearer <token>` when `STORAGE_API_TOKEN` is set; reads are public.

Errors are JSON: `{"error": {"code": "...", "message": "what to fix"}}`.
"""


async def _every(
    interval_s: float, action: Callable[[], Awaitable[object]], name: str, *, first_after_s: float = 0.0
) -> None:
    await asyncio.sleep(first_after_s)
    while True:
        try:
            await action()
        except Exception:  # a background chore must never die; the next round retries
            log.exception("%s failed", name)
        await asyncio.sleep(interval_s)


CHART_MEMORY_LIMIT_MIB = 1024
"""The chart's memory limit for storage (charts/cropseg/values.yaml): the budget's limit for a
process started outside a container."""
TEMP_SWEEP_INTERVAL_S = 300.0  # half-written files of a crashed writer go within 15 minutes;
# expired field uploads within 5 minutes of their expiry (the first sweep runs at start)


def create_app(
    settings: StorageSettings | None = None,
    registry: CollectorRegistry | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The app; ``transport`` carries every outgoing HTTP call (tests pass ``httpx.MockTransport``)."""
    settings = settings or get_settings()
    registry = registry or CollectorRegistry()
    metrics = StorageMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store = open_store(settings.store)
        except StoreError as e:  # an unusable data folder or bucket stops start-up, saying why
            log.error("cannot open the store: %s", e)
            raise
        repository = ImageRepository(store, settings.image_limits)
        staging = UploadStaging(
            settings.field_staging_path(),
            expire_after=timedelta(hours=settings.fields.expire_after_h),
            max_receiving=settings.fields.max_receiving,
            retry_after_s=settings.retry_after_s,
            store_folder=settings.store.path if settings.store.backend == "filesystem" else None,
        )

        def sweep_uploads() -> None:
            metrics.field_uploads.labels("expired").inc(staging.sweep_expired())

        if settings.samples_path is not None:
            await run_in_threadpool(
                seed_samples, repository, settings.samples_path, settings.real_photos_path
            )

        async def check_store() -> str | None:
            try:
                await run_in_threadpool(store.check_writable)
            except StoreError as e:
                return str(e)
            return None

        def record_check(check: Check) -> None:
            metrics.service_up.labels(check.service).set(1 if check.ok else 0)

        outgoing = httpx.AsyncClient(timeout=30, transport=transport)  # status checks, drift reads
        inference = InferenceClient(
            str(settings.inference_url),
            timeout_s=settings.inference_timeout_s,
            max_connections=settings.inference_max_connections,
            retry_after_s=settings.retry_after_s,
            transport=transport,
        )
        app.state.repository = repository
        app.state.field_staging = staging
        app.state.fields = FieldCatalogue(store)
        app.state.field_launcher = field_launcher(settings)  # a Job per segmentation in a cluster
        metrics.field_jobs.watch(app.state.fields)
        app.state.inference = inference
        app.state.check_store = check_store
        app.state.outgoing = outgoing
        app.state.status_monitor = StatusMonitor(
            store,
            {"inference": str(settings.inference_url), "drift-monitor": str(settings.drift_url)},
            check_store,
            interval_s=settings.status_interval_s,
            history_days=settings.status_history_days,
            client=outgoing,
            on_check=record_check,
        )
        chores = [
            asyncio.create_task(
                _every(settings.status_interval_s, app.state.status_monitor.check_all, "status check")
            ),
            asyncio.create_task(
                _every(
                    settings.stats_interval_s,
                    lambda: run_in_threadpool(metrics.recount, repository, store),
                    "recount",
                )
            ),
            asyncio.create_task(
                _every(
                    TEMP_SWEEP_INTERVAL_S,
                    lambda: run_in_threadpool(store.sweep_temporary),
                    "temp sweep",
                    first_after_s=TEMP_SWEEP_INTERVAL_S,
                )  # opening the store swept already
            ),
            asyncio.create_task(
                _every(
                    TEMP_SWEEP_INTERVAL_S, lambda: run_in_threadpool(sweep_uploads), "expired upload sweep"
                )
            ),
        ]
        log.info("storage ready: %s, inference at %s", store.describe(), settings.inference_url)
        yield
        for chore in chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        await inference.aclose()
        await outgoing.aclose()

    def configure(app: FastAPI) -> None:
        if settings.cors_origins:
            app.add_middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                allow_headers=["Authorization", "Content-Type", *tus.REQUEST_HEADERS],
                expose_headers=[
                    "Location",
                    "ETag",
                    Header.VEGETATION_FRACTION,
                    Header.MODEL_VERSION,
                    *tus.RESPONSE_HEADERS,
                ],
            )
        app.add_middleware(tus.TusResumable, prefix=fields.UPLOADS)

        # A configured basemap's tiles are the one thing the page may load from elsewhere.
        tiles = settings.fields.map_tiles_origin
        policy = UI_POLICY.replace("img-src 'self'", f"img-src 'self' {tiles}") if tiles else UI_POLICY

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            headers = {"Cache-Control": "no-cache", "Content-Security-Policy": policy}
            return FileResponse(WEB / "index.html", headers=headers)

        app.mount("/static", StaticFiles(directory=WEB), name="static")

    spec = ServiceSpec(
        name=SERVICE_NAME,
        distribution="cropseg-storage",
        title="cropseg storage",
        description=DESCRIPTION,
        routers=[
            images.router,
            fields.router,
            layouts.router,
            segmentation.router,
            meta.router,
            drift.router,
        ],
        readiness=meta.readiness,
        dependencies=meta.DEPENDENCIES,
        largest_body_bytes=max(
            upload_body_limit(settings.image_limits.max_bytes, images.UPLOAD_FILES),
            settings.fields.max_chunk_bytes,
        ),
        chart_memory_limit_mib=CHART_MEMORY_LIMIT_MIB,
        configure=configure,
    )
    app, _ = build_service(spec, settings, registry, lifespan, retry_after_s=settings.retry_after_s)
    app.state.metrics = metrics
    return app
