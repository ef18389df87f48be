"""Builds the drift-monitor API: store, reference profile, run launcher, metrics, routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from cropseg_core.features import load_reference_profile
from cropseg_core.store import open_store
from cropseg_core.web.service import ServiceSpec, build_service
from cropseg_drift import SERVICE_NAME
from cropseg_drift.metrics import DriftCollector
from cropseg_drift.routes import meta, reference, reports, runs
from cropseg_drift.runs import RunLauncher
from cropseg_drift.settings import DriftSettings, get_settings

DESCRIPTION = """\
Reports whether recent uploads and predictions still look like the data the model was trained
on (Alibi Detect, or the same tests with scipy).

* `GET /api/v1/drift/reports/latest`: the newest report; `/reports`: all, newest first.
* `POST /api/v1/drift/runs`: run now (a Job from the CronJob in a cluster).
* `GET /api/v1/drift/reference`: what each layout is compared with; `PUT .../{layout}`: a report's
  images or a period's uploads as the reference; `DELETE .../{layout}`: the training images again.
* `/metrics`: the latest verdicts, p-values and distances for Prometheus.
"""


SMALL_BODY_BYTES = 64 * 1024
"""Only choosing a reference takes a body (a few fields); every body is bounded by this."""
CHART_MEMORY_LIMIT_MIB = 1024
"""The chart's memory limit for the drift API (charts/cropseg/values.yaml): the budget's limit for
a process started outside a container."""

SPEC = ServiceSpec(
    name=SERVICE_NAME,
    distribution="cropseg-drift",
    title="cropseg drift monitor",
    description=DESCRIPTION,
    routers=[reports.router, runs.router, reference.router, meta.router],
    readiness=meta.readiness,
    dependencies=meta.DEPENDENCIES,
    largest_body_bytes=SMALL_BODY_BYTES,
    chart_memory_limit_mib=CHART_MEMORY_LIMIT_MIB,
    home_note="An API service: its reports are shown on the Drift page of cropseg storage's web UI.",
)


def create_app(settings: DriftSettings | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = registry or CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.profile = load_reference_profile(settings.reference_path)  # a broken profile stops start-up
        app.state.store = open_store(settings.store)
        app.state.launcher = RunLauncher(settings, app.state.store)
        registry.register(DriftCollector(app.state.store))
        yield

    app, _ = build_service(SPEC, settings, registry, lifespan)
    return app
