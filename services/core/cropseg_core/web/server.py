"""Running a service with uvicorn: one process, graceful shutdown, our logging, and limits on
what a client may hold: a deadline for request headers (uvicorn has none: a client sending a
header line every few seconds kept its connection for ever), a cap on open connections for the
process and one for each client address, and probes no client can crowd out (the kubelet's
``/healthz`` and ``/readyz`` and Prometheus' ``/metrics`` are answered whatever the count of
connections: 600 slow sockets that reconnect when cut no longer fail the probes and get the pod
restarted). The limits on bodies are middleware (:mod:`cropseg_core.web.limits`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections import Counter
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cropseg_core.log import configure_logging
from cropseg_core.memory import release_large_allocations
from cropseg_core.settings import ConnectionLimits

S = TypeVar("S", bound="Served")
PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
"""Answered whatever the count of connections (cheap, and what restarts or scales the pod)."""


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's line and headers,
    counted from the connection's start (first request) or the request's first byte (later
    ones; the keep-alive timeout covers the wait in between). Past it the client gets 408 and
    the connection is closed. A client address holding ``max_connections_per_client`` already
    gets 503 on a new connection; beyond the process's ``limit_concurrency`` requests get 503,
    except those to :data:`PROBE_PATHS`."""

    header_timeout_s = 10.0
    max_connections_per_client = 256
    per_client: Counter[str]  # open connections by client address, one per server (server_config)
    _deadline: asyncio.TimerHandle | None = None
    _address: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.per_client[address] >= self.max_connections_per_client:
            self._refuse(
                503,
                f"this address has {self.max_connections_per_client} connections open already; "
                "close some, or retry after 1 s",
            )
            return
        if address is not None:
            self._address = address
            self.per_client[address] += 1
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        probe = httptools.parse_url(self.url).path in PROBE_PATHS
        self.limit_concurrency = None if probe else self.config.limit_concurrency
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            self.per_client[self._address] -= 1
            if not self.per_client[self._address]:
                del self.per_client[self._address]
            self._address = None
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
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` with ``text`` outside any request, and close the connection."""
        reason = {408: b"Request Timeout", 503: b"Service Unavailable\r\nretry-after: 1"}[status]
        message = text.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(message), message)
        )
        self.transport.close()


def server_config(app: FastAPI, *, host: str, port: int, shutdown_timeout_s: float,
                  limits: ConnectionLimits) -> uvicorn.Config:  # fmt: skip
    """How every service is served (also what the tests of these limits run)."""
    attributes = {
        "header_timeout_s": limits.header_timeout_s,
        "max_connections_per_client": limits.max_connections_per_client,
        "per_client": Counter(),
    }
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), attributes)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_config=None,  # keep cropseg_core.log's handlers (and its filter of the probes' access lines)
        access_log=True,  # one line per request with its status, where the service runs
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
