"""Running a service with uvicorn: one process, graceful shutdown, our logging."""

from __future__ import annotations

import importlib.metadata

import uvicorn
from fastapi import FastAPI


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
        server_header=False,
        proxy_headers=True,
    )
    uvicorn.Server(config).run()


def dependency_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of ``distributions`` (the seed's ``GET /`` listed its requirements)."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
