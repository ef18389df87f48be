"""The skeleton every service is built on: app assembly, health and readiness, service info and
dependencies taken from the app's state. A service supplies only what is its own in a
:class:`ServiceSpec` (routers, readiness checks, limits, a start-up) and gets the same app as
the others: offline docs and a home page, JSON errors, Prometheus metrics, request and memory
limits, ``/healthz``, ``/readyz`` and the HTTP hygiene outermost.

Readiness is one shape everywhere: ``{"status": "ready" | "degraded" | "not ready", "checks":
{name: {"status": "ok" | "degraded" | "failed", "detail": ...}}}``. A failed check makes the
service not ready (503: take it out of the load balancer); a degraded one leaves it in service
(200), saying what does not work until the dependency is back.
"""

from __future__ import annotations

import platform
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from cropseg_core.settings import ServiceSettings
from cropseg_core.web.docs import service_app
from cropseg_core.web.errors import install_error_handlers
from cropseg_core.web.hygiene import install_http_hygiene
from cropseg_core.web.limits import MemoryBudget, install_request_limits
from cropseg_core.web.metrics import install_metrics
from cropseg_core.web.server import dependency_versions

T = TypeVar("T")


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessCheck(BaseModel):
    status: Literal["ok", "degraded", "failed"]
    """failed: the service cannot serve; degraded: a dependency is down and only what needs it fails."""
    detail: str


ReadinessState = Literal["ready", "degraded", "not ready"]


class Readiness(BaseModel):
    status: ReadinessState
    """ready (200): all is well; degraded (200): in service, with what does not work in the
    checks; not ready (503): a check failed."""
    checks: dict[str, ReadinessCheck]


ReadinessProbe = Callable[[Request], Awaitable[dict[str, ReadinessCheck]]]
"""A service's readiness checks, by name (run on every ``/readyz``: keep them cheap and bounded)."""


class ServiceInfo(BaseModel):
    """``GET /api/v1/info`` of every service (each adds its own fields)."""

    service: str
    version: str
    python: str
    dependencies: dict[str, str]


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service itself."""

    name: str
    """The service's name in answers and logs, e.g. ``cropseg-inference``."""
    distribution: str
    """Its Python distribution, whose installed version is the app's version."""
    title: str
    description: str
    routers: Sequence[APIRouter]
    readiness: ReadinessProbe
    dependencies: Sequence[str]
    """Distributions whose versions ``/api/v1/info`` reports (beside the service's own)."""
    largest_body_bytes: int
    """The largest request body a route takes (bounds the bodies held at once)."""
    chart_memory_limit_mib: int
    """The chart's memory limit for the service: the budget's limit outside a container."""
    home_note: str | None = None
    """For an API-only service: a line on its ``GET /`` home page (None: the service has its own ``/``)."""
    plain_error_prefixes: Sequence[str] = ()
    """Paths whose errors keep a protocol's own plain shape (see :func:`install_error_handlers`)."""
    cancel_on_disconnect: bool = False
    """Stop a request's work when its client goes away."""
    configure: Callable[[FastAPI], None] | None = None
    """Middleware, pages and mounts of its own, added before the HTTP hygiene."""

    def info(self, **extra: object) -> dict[str, object]:
        """The fields of :class:`ServiceInfo`, and ``extra``."""
        versions = dependency_versions(self.distribution, *self.dependencies)
        return {
            "service": self.name,
            "version": versions[self.distribution],
            "python": platform.python_version(),
            "dependencies": versions,
            **extra,
        }


def build_service(
    spec: ServiceSpec,
    settings: ServiceSettings,
    registry: CollectorRegistry,
    lifespan: Lifespan,
    *,
    retry_after_s: int = 1,
) -> tuple[FastAPI, MemoryBudget]:
    """The service's app, and its memory budget. ``lifespan`` is the service's own start-up and
    shutdown; the budget is settled once it has started (what requests may reserve is measured
    with the service's own memory in use)."""

    @asynccontextmanager
    async def started(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app):
            budget.settle()
            yield

    app = service_app(
        title=spec.title,
        version=dependency_versions(spec.distribution)[spec.distribution],
        description=spec.description,
        lifespan=started,
        home_note=spec.home_note,
    )
    app.state.settings = settings
    app.state.spec = spec
    install_error_handlers(app, plain_prefixes=spec.plain_error_prefixes)
    install_metrics(app, registry)
    budget = install_request_limits(
        app,
        settings.connections,
        largest_body_bytes=spec.largest_body_bytes,
        memory=settings.memory,
        default_memory_limit_mib=spec.chart_memory_limit_mib,
        registry=registry,
        retry_after_s=retry_after_s,
        cancel_on_disconnect=spec.cancel_on_disconnect,
    )
    if spec.configure is not None:
        spec.configure(app)
    for router in spec.routers:
        app.include_router(router)
    app.include_router(health_router(spec.readiness))
    install_http_hygiene(app)  # outermost: HEAD and security headers for every route
    return app, budget


def health_router(readiness: ReadinessProbe) -> APIRouter:
    """``/healthz`` (liveness: the process answers) and ``/readyz`` (the service's checks)."""
    router = APIRouter(tags=["service"])

    @router.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: ready (200), degraded (200, in service without a dependency) or not ready (503)."""
        checks = await readiness(request)
        states = {check.status for check in checks.values()}
        status: ReadinessState = (
            "not ready" if "failed" in states else "degraded" if "degraded" in states else "ready"
        )
        body = Readiness(status=status, checks=checks)
        return JSONResponse(body.model_dump(), status_code=503 if status == "not ready" else 200)

    return router


def get_spec(request: Request) -> ServiceSpec:
    """The running service's :class:`ServiceSpec` (for its info route)."""
    spec: ServiceSpec = request.app.state.spec
    return spec


Spec = Annotated[ServiceSpec, Depends(get_spec)]


def from_state(attribute: str, kind: type[T]) -> Callable[[Request], T]:
    """A FastAPI dependency giving ``app.state.<attribute>`` (set by the service's start-up) as
    a ``kind``: ``Annotated[Engine, Depends(from_state("engine", Engine))]``."""

    def dependency(request: Request) -> T:
        value = getattr(request.app.state, attribute)
        if not isinstance(value, kind):
            raise TypeError(f"app.state.{attribute} is {type(value).__name__}, not {kind.__name__}")
        return value

    dependency.__name__ = f"get_{attribute}"
    return dependency
