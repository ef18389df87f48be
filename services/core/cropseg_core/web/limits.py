"""What one client may hold of a service, enforced as ASGI middleware (the server's own
limits, header timeout and connection count, are in :mod:`cropseg_core.web.server`).

- :class:`BodyBudget`: the bytes of request bodies a process holds at once are bounded. A body
  counts with its Content-Length (or what has arrived, without one) from its first read until
  its response is sent; beyond the budget the request gets 503 + Retry-After before any of it
  is read, so eight clients declaring 50 MB and sending one byte no longer pin 400 MB.
- :class:`CancelOnDisconnect`: when a client goes away after sending its body and before its
  answer starts, the handler is cancelled, and with it the work it queued (the inference
  service drops the request's tiles still waiting for the model). Such requests are counted
  with status 499 (client closed request), as nginx does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cropseg_core.settings import ConnectionLimits
from cropseg_core.web.errors import PayloadTooLargeError, UnavailableError

log = logging.getLogger(__name__)


class BodyBudget:
    """Pure ASGI middleware: at most ``total_bytes`` of request bodies in flight."""

    def __init__(self, app: ASGIApp, *, total_bytes: int, retry_after_s: int) -> None:
        self.app = app
        self.total_bytes = total_bytes
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def _take(self, size: int) -> None:
        if size > self.total_bytes:
            raise PayloadTooLargeError(
                f"request body of {size} bytes is more than this service receives at once "
                f"({self.total_bytes} bytes)"
            )
        if self.in_flight + size > self.total_bytes:
            raise UnavailableError(
                f"the service is receiving {self.in_flight} bytes of other request bodies and takes at "
                f"most {self.total_bytes} at once; retry after {self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        held = received = 0

        async def counted() -> Message:
            # Raised from here, a refusal reaches the route's error handler: the answer has the
            # route's error shape, and nothing of the body has been read.
            nonlocal held, received
            if held == 0 and declared:
                self._take(declared)
                held = declared
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > held:
                    self._take(received - held)
                    held = received
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.in_flight -= held


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class CancelOnDisconnect:
    """Pure ASGI middleware: cancel the handler when the client disconnects once its body is
    read and before the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        responding = False

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal responding
            responding = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        client_left = False

        async def watch() -> None:
            nonlocal client_left
            await body_read.wait()
            # After the body, the server's receive() returns only when the client disconnects
            # (or once the response is complete, which `responding` tells apart).
            message = await receive()
            if message["type"] == "http.disconnect" and not responding:
                log.info("client disconnected: cancelled %s %s", scope["method"], scope["path"])
                client_left = True
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not client_left:
                raise  # cancelled from outside (shutdown), not by the client leaving
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def install_request_limits(
    app: FastAPI,
    limits: ConnectionLimits,
    *,
    largest_body_bytes: int,
    retry_after_s: int = 1,
    cancel_on_disconnect: bool = False,
) -> None:
    """Bound the bodies ``app`` holds at once (``limits.max_body_bytes_in_flight``, by default
    twice ``largest_body_bytes``), pace their reading (:mod:`cropseg_core.web.bodies`) and,
    with ``cancel_on_disconnect``, stop work for clients that went away.

    Call after :func:`~cropseg_core.web.metrics.install_metrics` (so a cancelled request is
    still counted) and before :func:`~cropseg_core.web.hygiene.install_http_hygiene`.
    """
    app.state.connection_limits = limits
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnect)
    total = limits.max_body_bytes_in_flight or 2 * largest_body_bytes
    app.add_middleware(BodyBudget, total_bytes=total, retry_after_s=retry_after_s)
