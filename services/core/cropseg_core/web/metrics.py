"""HTTP request metrics for every service (the prometheus-fastapi-instrumentator family).

Metrics live in a registry the app is given, so each test builds a fresh one. ``handler``
is the route template (``/api/v1/images/{image_id}``), never the raw path, so labels stay
few whatever clients send; requests that match no route count as ``handler="none"``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED = 499
"""Status counted for a request whose client left before the answer (nginx's convention)."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = tuple(float(4**power) for power in range(3, 14))  # 64 B .. 64 MiB


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total", "Requests answered, by route, method and status.",
            ["handler", "method", "status"], registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "http_request_duration_seconds", "Time from request to the end of the response.",
            ["handler", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_progress = Gauge(
            "http_requests_inprogress", "Requests being handled now.", ["handler", "method"],
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.request_size = Histogram(
            "http_request_size_bytes",
            "Request body size.",
            ["handler"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.response_size = Histogram(
            "http_response_size_bytes",
            "Response body size.",
            ["handler"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware: counts bytes both ways without buffering the body."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        started = time.perf_counter()
        status, request_bytes, response_bytes = 500, 0, 0

        async def counting_receive() -> Message:
            nonlocal request_bytes
            message = await receive()
            if message["type"] == "http.request":
                request_bytes += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # cancelled because the client went away (or shutdown)
            raise
        finally:
            handler = route_template(scope)
            self.metrics.requests.labels(handler, method, str(status)).inc()
            self.metrics.duration.labels(handler, method).observe(time.perf_counter() - started)
            self.metrics.request_size.labels(handler).observe(request_bytes)
            self.metrics.response_size.labels(handler).observe(response_bytes)


def route_template(scope: Scope) -> str:
    """The matched route's path template; FastAPI sets ``scope["route"]`` while routing."""
    route: Any = scope.get("route")
    return str(getattr(route, "path", "none"))


def install_metrics(app: FastAPI, registry: CollectorRegistry) -> HttpMetrics:
    """Add request metrics and ``GET /metrics`` (Prometheus text format) to ``app``.

    Call before including routers: in-progress is an app-wide dependency (the route is only
    known once routing has run, which is after the middleware starts).
    """
    metrics = HttpMetrics(registry)
    # The process and interpreter metrics the default registry would carry (the seed's
    # dashboard had a row of Python GC panels): CPU, memory, file descriptors, GC.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def track_in_progress(request: Request) -> Iterator[None]:
        gauge = metrics.in_progress.labels(route_template(request.scope), request.method)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    app.router.dependencies.append(Depends(track_in_progress))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
