"""Interactive API docs served by the service itself, so that /docs and /redoc work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN: behind a firewall, on a plane or
in an air-gapped cluster they are blank. ``fastapi-offline`` (MIT) packages both (Swagger UI 5,
which renders OpenAPI 3.1) and serves them from ``/static-offline-docs``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline


def service_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app with /docs (Swagger UI) and /redoc served from packaged files."""
    return FastAPIOffline(**kwargs)
