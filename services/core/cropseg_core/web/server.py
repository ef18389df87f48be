"""Running a service with uvicorn: one process, graceful shutdown, our logging."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI

from cropseg_core.log import configure_logging

S = TypeVar("S", bound="Served")


def serve(app: FastAPI, *, host: str, port: int, shutdown_timeout_s: float) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight requests, exit.

    uvicorn closes the listening socket on the signal, waits up to ``shutdown_timeout_s``
    for open requests to complete and only then runs the app's lifespan shutdown.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep cropseg_core.log's handlers
        access_log=False,  # request metrics cover it; errors are logged by the handlers
        timeout_graceful_shutdown=int(shutdown_timeout_s),
        # Longer than any client or proxy keeps an idle connection (nginx: 75 s): uvicorn's 5 s
        # default closes connections that clients are about to reuse, and the request is lost.
        timeout_keep_alive=90,
        server_header=False,
        proxy_headers=True,
    )
    # On Ctrl-C uvicorn shuts down gracefully, then re-raises KeyboardInterrupt: nothing to report.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


class Served(Protocol):
    """What every service's settings carry for serving."""

    host: str
    port: int
    shutdown_timeout_s: float
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    log_format: Literal["text", "json"]


def serve_settings(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """Configure logging from ``settings``, build the app and serve it until a signal."""
    configure_logging(settings.log_level, settings.log_format)
    serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )


def dependency_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of ``distributions`` (the seed's ``GET /`` listed its requirements)."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
