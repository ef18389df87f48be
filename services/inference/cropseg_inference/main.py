"""Builds the inference app: settings, metrics registry, engine, routers, lifespan."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from cropseg_core.web import layouts
from cropseg_core.web.bodies import upload_body_limit
from cropseg_core.web.service import ServiceSpec, build_service
from cropseg_inference import SERVICE_NAME
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.routes import meta, segment, v2
from cropseg_inference.settings import InferenceSettings, get_settings

log = logging.getLogger(__name__)
CHART_MEMORY_LIMIT_MIB = 2048
"""The chart's memory limit for inference (charts/cropseg/values.yaml): the budget's limit for a
process started outside a container."""

DESCRIPTION = """\
Segments vegetation (crop and weeds) from soil in UAV field images with an ONNX U-Net.

* `POST /api/v1/segment` takes a PNG, JPEG or TIFF of any size and returns the mask.
* `/v2/...` is the Open Inference Protocol (KServe, Triton, MLServer clients).
* `/metrics` is for Prometheus; `/healthz` and `/readyz` for probes.

Errors are JSON: `{"error": {"code": "...", "message": "what to fix"}}`.
"""


def read_model_card(settings: InferenceSettings) -> dict[str, Any] | None:
    try:
        card: dict[str, Any] = json.loads(settings.card_path.read_text())
    except FileNotFoundError:
        log.warning(
            "no model card metrics at %s; /api/v1/model will report metrics: null", settings.card_path
        )
        return None
    return card


def create_app(
    settings: InferenceSettings | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    settings = settings or get_settings()
    registry = registry or CollectorRegistry()
    metrics = InferenceMetrics(registry, settings.max_batch_size)
    engine = SegmentationEngine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.load()  # a broken model file stops the start-up here, with the reason in the log
        app.state.model_card = read_model_card(settings)
        await engine.start()
        yield
        log.info("shutting down: finishing queued work")
        await engine.stop()

    spec = ServiceSpec(
        name=SERVICE_NAME,
        distribution="cropseg-inference",
        title="cropseg inference",
        description=DESCRIPTION,
        routers=[segment.router, layouts.router, v2.router, meta.router],
        readiness=meta.readiness,
        dependencies=meta.DEPENDENCIES,
        largest_body_bytes=max(
            upload_body_limit(settings.image_limits.max_bytes), settings.max_tensor_request_bytes
        ),
        chart_memory_limit_mib=CHART_MEMORY_LIMIT_MIB,
        home_note="An API service: the web UI is served by cropseg storage (port 8002 under make up).",
        plain_error_prefixes=("/v2",),
        cancel_on_disconnect=True,  # a client that gave up no longer holds the model's queue
    )
    app, _ = build_service(spec, settings, registry, lifespan, retry_after_s=settings.retry_after_s)
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.model_card = None
    return app
