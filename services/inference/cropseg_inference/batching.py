"""Micro-batching: tiles from concurrent requests run together in one ONNX Runtime call.

Requests put their tiles in one bounded queue; a single worker takes tiles in turn from the
requests waiting (round robin: one tile of each request per turn, so a 40 MP image and a phone
photo share the model equally while both wait) plus up to ``max_batch_size - 1`` more of the
same shape (waiting at most ``max_wait_s`` for them), runs the batch in a worker thread so the
event loop stays free, and resolves each tile's future. While one batch runs, the next one
gathers, so batches grow with load by themselves. A full queue refuses new work at once (the
caller answers 503 + Retry-After) instead of letting requests wait into client timeouts.

The queue is bounded in time as well as in tiles: the batcher keeps a moving average of the
seconds one tile takes, and a new request whose wait would exceed ``max_queue_wait_s`` (the
tiles that run before its first one, in turn order, times that average) is refused at once.
Under overload the excess is shed with a prompt 503 and the requests admitted stay within a
latency bound. Because turns go round, a request waits behind one tile of each other request,
not behind all their tiles: one client looping 40 MP images no longer makes every small
request look like seconds of wait and get refused.

Admission is fair: a request's tiles enter the queue in chunks of at most ``max_chunk``, each
chunk all at once or not at all. The first chunk is refused when it does not fit (nothing of
the request is queued); once admitted, a large request queues its next chunk when its previous
one is done and there is room, so a 40 MP image (hundreds of tiles) never holds more than one
chunk of the queue.
A chunk's tiles are taken from the request's sequence only when the chunk is queued and each
result is handed over as soon as its chunk is done (:meth:`MicroBatcher.feed`), so a request
holds one chunk of tiles and predictions in memory, not all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFullError(Exception):
    """The queue holds ``max_queue`` tiles, or ``max_queue_wait_s`` of work, already; try again later."""


class BatcherStoppedError(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class BatchStats:
    """What the batcher reports per batch (for metrics)."""

    size: int
    run_s: float


@dataclass
class _Pending:
    array: np.ndarray
    future: asyncio.Future[TileResult]
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class TileResult:
    output: np.ndarray
    queued_s: float  # from submission until its batch started


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_chunk: int | None = None,
        max_queue_wait_s: float = 0.0,
        on_batch: Callable[[BatchStats], None] = lambda stats: None,
        on_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_chunk = max_chunk or max(1, max_queue // 4)
        self.max_queue_wait_s = max_queue_wait_s  # 0: only max_queue bounds the queue
        self.tile_s = 0.0  # moving average of seconds per tile (0 until the first batch)
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._turns: dict[int, deque[_Pending]] = {}  # request -> its queued tiles, in turn order
        self._depth = 0
        self._requests = itertools.count()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()  # set whenever the worker takes tiles off the queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._serve(), name="micro-batcher")

    def _ahead(self, request: int | None = None) -> int:
        """Tiles that run before the next tile ``request`` queues (a new request: None): its own
        queued tiles, and in each of their turns one tile of every other request."""
        own = len(self._turns.get(request, ())) if request is not None else 0
        return own + sum(min(len(tiles), own + 1) for other, tiles in self._turns.items() if other != request)

    @property
    def expected_wait_s(self) -> float:
        """How long the first tile of a request queued now would wait before its batch starts
        (an estimate)."""
        return self._ahead() * self.tile_s

    def check_wait(self, request: int | None = None) -> None:
        """QueueFullError when a new request would wait longer than ``max_queue_wait_s``: callers
        ask before they read and decode a request, so that shedding it costs next to nothing."""
        if self.max_queue_wait_s and (wait := self._ahead(request) * self.tile_s) > self.max_queue_wait_s:
            raise QueueFullError(
                f"{self._depth} tiles of {len(self._turns)} requests wait; a new request would wait about "
                f"{wait:.2f} s (limit {self.max_queue_wait_s:g} s)"
            )

    def submit(
        self, arrays: list[np.ndarray], *, request: int | None = None, admit: bool = True
    ) -> list[asyncio.Future[TileResult]]:
        """Queue ``arrays`` for ``request`` (None: a request of their own): all of them, or none
        when they do not all fit. ``admit``: a new request, also refused when the work ahead of it
        would keep it waiting too long (an admitted request's later chunks are not)."""
        if self._stopping:
            raise BatcherStoppedError("the service is shutting down")
        if self._depth + len(arrays) > self.max_queue:
            raise QueueFullError(
                f"{self._depth} tiles wait, {len(arrays)} more do not fit (limit {self.max_queue})"
            )
        if request is None:
            request = next(self._requests)
        if admit:
            self.check_wait(request)
        loop = asyncio.get_running_loop()
        pending = [_Pending(array, loop.create_future()) for array in arrays]
        self._turns.setdefault(request, deque()).extend(pending)
        self._depth += len(pending)
        self._on_depth(self._depth)
        self._arrived.set()
        return [p.future for p in pending]

    async def run(self, arrays: Sequence[np.ndarray]) -> list[TileResult]:
        """The results of ``arrays``, queued chunk by chunk (QueueFullError: none was queued)."""
        results: list[TileResult] = []
        await self.feed(arrays, lambda index, result: results.append(result))
        return results

    async def feed(self, tiles: Sequence[np.ndarray], deliver: Callable[[int, TileResult], None]) -> None:
        """Run ``tiles`` chunk by chunk, handing each result to ``deliver(index, result)`` in
        order as its chunk completes. ``tiles[a:b]`` is read once per chunk, when it is queued:
        a lazy sequence makes its arrays only then. QueueFullError: nothing was queued. When the
        caller is cancelled or a batch fails, the request's queued tiles are dropped."""
        request = next(self._requests)
        for start in range(0, len(tiles), self.max_chunk):
            chunk = list(tiles[start : start + self.max_chunk])
            futures = (
                self.submit(chunk, request=request)
                if start == 0
                else await self._submit_when_room(chunk, request)
            )
            try:
                for offset, result in enumerate(await asyncio.gather(*futures)):
                    deliver(start + offset, result)
            except BaseException:
                for future in futures:
                    future.cancel()  # the worker skips cancelled tiles; later chunks never queue
                raise

    async def _submit_when_room(
        self, arrays: list[np.ndarray], request: int
    ) -> list[asyncio.Future[TileResult]]:
        """An admitted request's next chunk: queued as soon as it fits."""
        while True:
            try:
                return self.submit(arrays, request=request, admit=False)
            except QueueFullError:
                self._room.clear()
                await self._room.wait()

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then stop the worker."""
        self._stopping = True
        while self._depth:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    def _drop_cancelled(self) -> None:
        """Forget the tiles of requests that went away (at the head of their turn)."""
        for request in list(self._turns):
            tiles = self._turns[request]
            while tiles and tiles[0].future.cancelled():
                tiles.popleft()
                self._depth -= 1
            if not tiles:
                del self._turns[request]

    def _take_batch(self) -> list[_Pending]:
        """One tile of each request in turn (more rounds while the batch has room), all of the
        first one's shape; the requests served go to the back of the turn order."""
        batch: list[_Pending] = []
        shape = next(iter(self._turns.values()))[0].array.shape
        served: list[int] = []
        while len(batch) < self.max_batch_size:
            took = False
            for request, tiles in self._turns.items():
                index = next((i for i, item in enumerate(tiles) if item.array.shape == shape), None)
                if index is not None and len(batch) < self.max_batch_size:
                    batch.append(tiles[index])
                    del tiles[index]
                    served.append(request)
                    took = True
            if not took:
                break
        self._depth -= len(batch)
        for request in dict.fromkeys(served):  # to the back of the turn order, or gone
            tiles = self._turns.pop(request)
            if tiles:
                self._turns[request] = tiles
        return batch

    def _full_batch_waits(self) -> bool:
        shape = next(iter(self._turns.values()))[0].array.shape
        same = sum(1 for tiles in self._turns.values() for item in tiles if item.array.shape == shape)
        return same >= self.max_batch_size

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._turns:
                self._on_depth(self._depth)
                self._room.set()
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.max_wait_s > 0:
                deadline = min(tiles[0].enqueued_at for tiles in self._turns.values()) + self.max_wait_s
                while not self._full_batch_waits() and (remaining := deadline - time.perf_counter()) > 0:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                self._drop_cancelled()
                if not self._turns:
                    continue
            batch = self._take_batch()
            self._on_depth(self._depth)
            self._room.set()
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self._run, np.stack([p.array for p in batch])
                )
            except Exception as e:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            run_s = time.perf_counter() - started
            per_tile = run_s / len(batch)
            self.tile_s = per_tile if not self.tile_s else 0.8 * self.tile_s + 0.2 * per_tile
            self._on_batch(BatchStats(len(batch), run_s))
            for item, output in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(TileResult(output, started - item.enqueued_at))
