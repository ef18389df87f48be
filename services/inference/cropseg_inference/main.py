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
from cropseg_core.web.docs import service_app
from cropseg_core.web.errors import install_error_handlers
from cropseg_core.web.hygiene import install_http_hygiene
from cropseg_core.web.limits import install_request_limits
from cropseg_core.web.metrics import install_metrics
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
        budget.settle()  # what requests may reserve: measured once the model is loaded and warm
        yield
        log.info("shutting down: finishing queued work")
        await engine.stop()

    app = service_app(
        title="cropseg inference",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        home_note="An API service: the web UI is served by cropseg storage (port 8002 under make up).",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.model_card = None
    install_error_handlers(app, plain_prefixes=("/v2",))
    install_metrics(app, registry)
    budget = install_request_limits(
        app,
        settings.connections,
        memory=settings.memory,
        default_memory_limit_mib=CHART_MEMORY_LIMIT_MIB,
        registry=registry,
        largest_body_bytes=max(
            upload_body_limit(settings.image_limits.max_bytes), settings.max_tensor_request_bytes
        ),
        retry_after_s=settings.retry_after_s,
        cancel_on_disconnect=True,  # a client that gave up no longer holds the model's queue
    )
    app.include_router(segment.router)
    app.include_router(layouts.router)
    app.include_router(v2.router)
    app.include_router(meta.router)
    install_http_hygiene(app)  # outermost: HEAD and security headers for every route
    return app
