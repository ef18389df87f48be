"""What one client may hold of a service, enforced as ASGI middleware (the server's own
limits, header timeout and connection count, are in :mod:`cropseg_core.web.server`).

- :class:`BodyBudget`: the bytes of request bodies a process holds at once are bounded. A body
  counts with the bytes that have arrived (not its Content-Length: two slow clients declaring
  the largest length no longer lock everyone else out) until its response is sent; a part that
  would take the process beyond the budget is answered 503 + Retry-After. How slowly a body may
  arrive is :mod:`cropseg_core.web.bodies`' pace rule, so what a client holds, it holds briefly.
- :class:`MemoryBudget`: the memory large requests need at once is bounded for the process.
  Each decode, picture or JSON parse reserves its estimate (pixels from the image's header times
  the route's measured bytes per pixel: :data:`MEMORY_COST`) before it allocates; what does
  not fit waits its turn (first come, first served) for up to ``wait_s``, then gets 503 +
  Retry-After. Sixteen 40 MP uploads at once run one or two at a time instead of together.
- :class:`CancelOnDisconnect`: when a client goes away after sending its body and before its
  answer starts, the handler is cancelled, and with it the work it queued (the inference
  service drops the request's tiles still waiting for the model). Such requests are counted
  with status 499 (client closed request), as nginx does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio.from_thread
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cropseg_core.errors import UnavailableError
from cropseg_core.imaging import image_pixels
from cropseg_core.settings import ConnectionLimits, ImageLimits, MemoryLimits

log = logging.getLogger(__name__)


class BodyBudget:
    """Pure ASGI middleware: at most ``total_bytes`` of request bodies in flight."""

    def __init__(self, app: ASGIApp, *, total_bytes: int, retry_after_s: int) -> None:
        self.app = app
        self.total_bytes = total_bytes
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def _take(self, size: int) -> None:
        if self.in_flight + size > self.total_bytes:
            raise UnavailableError(
                f"the service is receiving {self.in_flight} bytes of other request bodies and holds at "
                f"most {self.total_bytes} at once; retry after {self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = 0

        async def counted() -> Message:
            # Raised from here, a refusal reaches the route's error handler: the answer has the
            # route's error shape.
            nonlocal held
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                self._take(size)
                held += size
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.in_flight -= held


MIB = 1024 * 1024

MEMORY_COST = {
    "segment": 20,
    "segment-overlay": 24,
    "tensor": 6,
    "tensor-json": 6,
    "upload": 18,
    "picture": 14,
    "overlay": 16,
    "evaluation": 8,
    "mask": 4,
}
"""Peak memory a kind of work needs above what the process held before it: bytes per pixel of
an image, or per byte of an Open Inference Protocol body (``tensor``: binary data, ``tensor-json``:
JSON). About 1.3 times what ``benchmarks/memory.py`` measures on the largest inputs (40 MP:
segment 15.0, upload 14.2, overlay 12.2, picture 10.2, evaluation 6.0 bytes per pixel; OIP 4.3 per
body byte); tests/test_memory_contract.py fails when a route takes more than it reserved."""


class MemoryBudget:
    """Bytes of memory the process's large requests may reserve at once, granted first come,
    first served; a request that cannot get its share within ``wait_s`` gets 503.

    The budget is the limit's ``budget_share`` less what the process holds once started (model
    loaded, caches warm): :meth:`settle` measures it, at the end of the app's start-up or at the
    first reservation.
    """

    def __init__(
        self, limits: MemoryLimits, *, default_limit_mib: int, retry_after_s: int,
        registry: CollectorRegistry | None = None,
    ) -> None:  # fmt: skip
        self.limits = limits
        self.default_limit_mib = default_limit_mib
        self.wait_s = limits.wait_s
        self.retry_after_s = retry_after_s
        self.reserved = 0
        self._total: int | None = None
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        registry = registry or CollectorRegistry()  # none given: kept, not exported
        self._reserved_gauge = Gauge(
            "cropseg_memory_reserved_bytes", "Memory reserved by requests in progress.", registry=registry
        )
        self._total_gauge = Gauge(
            "cropseg_memory_budget_bytes", "Memory requests may reserve at once.", registry=registry
        )
        self._refused = Counter(
            "cropseg_memory_refused", "Requests refused (503) for want of memory.", registry=registry
        )

    def settle(self) -> int:
        """Measure the budget (once): the limit's share less the process's resident memory now."""
        if self._total is None:
            limit = self.limits.limit_mib * MIB if self.limits.limit_mib else container_memory_limit_bytes()
            limit = limit or self.default_limit_mib * MIB
            self._total = max(int(self.limits.budget_share * limit) - resident_bytes(), 64 * MIB)
            self._total_gauge.set(self._total)
            log.info("memory budget for requests: %d MiB of a %d MiB limit", self._total // MIB, limit // MIB)
        return self._total

    @property
    def total_bytes(self) -> int:
        return self.settle()

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, what: str) -> AsyncIterator[None]:
        """Hold ``nbytes`` (at most the whole budget: the largest legal request runs alone)
        while the block runs."""
        amount = max(0, min(nbytes, self.total_bytes))
        if self._waiting or self.reserved + amount > self.total_bytes:
            await self._wait(amount, what)
        else:
            self._take(amount)
        try:
            yield
        finally:
            self._take(-amount)
            self._grant()

    async def _wait(self, amount: int, what: str) -> None:
        entry = (amount, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await asyncio.shield(entry[1])
        except (TimeoutError, asyncio.CancelledError) as e:
            if entry[1].done():  # granted just as the wait ended
                if isinstance(e, TimeoutError):
                    return
                self._take(-amount)
                self._grant()
                raise
            self._waiting.remove(entry)
            entry[1].cancel()
            self._grant()  # the ones behind it may fit now
            if isinstance(e, asyncio.CancelledError):
                raise
            self._refused.inc()
            raise UnavailableError(
                f"{what} needs about {amount // MIB} MiB of memory and the service's other requests hold "
                f"{self.reserved // MIB} of its {self.total_bytes // MIB} MiB; retry after "
                f"{self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            ) from None

    def _take(self, amount: int) -> None:
        self.reserved += amount
        self._reserved_gauge.set(self.reserved)

    def _grant(self) -> None:
        while self._waiting and self.reserved + self._waiting[0][0] <= self.total_bytes:
            amount, granted = self._waiting.popleft()
            self._take(amount)
            granted.set_result(None)


def memory_budget(request: Request) -> MemoryBudget:
    """The app's memory budget (installed by :func:`install_request_limits`)."""
    budget: MemoryBudget = request.app.state.memory_budget
    return budget


def reserve_memory(request: Request, cost: str, pixels: int) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold the memory that work of kind ``cost`` (a key of :data:`MEMORY_COST`) on an image of
    ``pixels`` needs, while the block runs."""
    return memory_budget(request).reserve(pixels * MEMORY_COST[cost], f"a {pixels / 1e6:.1f} MP image")


@contextlib.contextmanager
def hold_memory(request: Request, cost: str, pixels: int) -> Iterator[None]:
    """:func:`reserve_memory` for a route that runs in a worker thread (a plain ``def``)."""
    reservation = reserve_memory(request, cost, pixels)
    anyio.from_thread.run(reservation.__aenter__)
    try:
        yield
    finally:
        anyio.from_thread.run(reservation.__aexit__, None, None, None)


@contextlib.asynccontextmanager
async def image_memory(request: Request, data: bytes, cost: str, limits: ImageLimits) -> AsyncIterator[int]:
    """:func:`reserve_memory` for the image ``data``, sized from its header (a bad or too large
    image is refused here, before any wait); the block gets the image's pixel count."""
    pixels = await run_in_threadpool(image_pixels, data, limits)
    async with reserve_memory(request, cost, pixels):
        yield pixels


def container_memory_limit_bytes() -> int | None:
    """The cgroup's memory limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), None if unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 50:  # v1 writes "unlimited" as a huge number
            return int(value)
    return None


def resident_bytes() -> int:
    """The process's resident memory now (0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
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
    memory: MemoryLimits | None = None,
    default_memory_limit_mib: int = 1024,
    registry: CollectorRegistry | None = None,
    retry_after_s: int = 1,
    cancel_on_disconnect: bool = False,
) -> MemoryBudget:
    """Bound the bodies ``app`` holds at once (``limits.max_body_bytes_in_flight``, by default
    twice ``largest_body_bytes``), pace their reading (:mod:`cropseg_core.web.bodies`), give
    routes the process's :class:`MemoryBudget` (``default_memory_limit_mib``: the chart's limit,
    for a process outside a container) and, with ``cancel_on_disconnect``, stop work for clients
    that went away. The app's start-up should end with the budget's :meth:`~MemoryBudget.settle`.

    Call after :func:`~cropseg_core.web.metrics.install_metrics` (so a cancelled request is
    still counted) and before :func:`~cropseg_core.web.hygiene.install_http_hygiene`.
    """
    app.state.connection_limits = limits
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnect)
    total = limits.max_body_bytes_in_flight or 2 * largest_body_bytes
    app.add_middleware(BodyBudget, total_bytes=total, retry_after_s=retry_after_s)
    budget = MemoryBudget(
        memory or MemoryLimits(),
        default_limit_mib=default_memory_limit_mib,
        retry_after_s=retry_after_s,
        registry=registry,
    )
    app.state.memory_budget = budget
    return budget
