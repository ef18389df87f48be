"""Running a service with uvicorn: one process, graceful shutdown, our logging, and limits on
what a client may hold: a deadline for request headers (uvicorn has none: a client sending a
header line every few seconds kept its connection for ever) and a cap on open connections.
The limits on bodies are middleware (:mod:`cropseg_core.web.limits`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cropseg_core.log import configure_logging
from cropseg_core.memory import release_large_allocations
from cropseg_core.settings import ConnectionLimits

S = TypeVar("S", bound="Served")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's line and headers,
    counted from the connection's start (first request) or the request's first byte (later
    ones; the keep-alive timeout covers the wait in between). Past it the client gets 408 and
    the connection is closed."""

    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # not in the middle of an answer
            message = f"request headers not received within {self.header_timeout_s:g} s".encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
            )
        self.transport.close()


def server_config(app: FastAPI, *, host: str, port: int, shutdown_timeout_s: float,
                  limits: ConnectionLimits) -> uvicorn.Config:  # fmt: skip
    """How every service is served (also what the tests of these limits run)."""
    deadline = {"header_timeout_s": limits.header_timeout_s}
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), deadline)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_config=None,  # keep cropseg_core.log's handlers
        access_log=False,  # request metrics cover it; errors are logged by the handlers
        timeout_graceful_shutdown=int(shutdown_timeout_s),
        # Longer than any client or proxy keeps an idle connection (nginx: 75 s): uvicorn's 5 s
        # default closes connections that clients are about to reuse, and the request is lost.
        timeout_keep_alive=90,
        limit_concurrency=limits.max_connections,
        server_header=False,
        proxy_headers=True,
    )


def serve(app: FastAPI, *, host: str, port: int, shutdown_timeout_s: float, limits: ConnectionLimits) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight requests, exit.

    uvicorn closes the listening socket on the signal, waits up to ``shutdown_timeout_s``
    for open requests to complete and only then runs the app's lifespan shutdown.
    """
    config = server_config(app, host=host, port=port, shutdown_timeout_s=shutdown_timeout_s, limits=limits)
    # On Ctrl-C uvicorn shuts down gracefully, then re-raises KeyboardInterrupt: nothing to report.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


class Served(Protocol):
    """What every service's settings carry for serving."""

    host: str
    port: int
    shutdown_timeout_s: float
    connections: ConnectionLimits
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    log_format: Literal["text", "json"]


def serve_settings(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """Configure logging from ``settings``, build the app and serve it until a signal."""
    configure_logging(settings.log_level, settings.log_format)
    release_large_allocations()  # a large request's arrays go back to the system when it ends
    serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        limits=settings.connections,
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
