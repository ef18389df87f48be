"""The model behind the HTTP layer: the core segmentation pipeline with the model's tiles put
through the micro-batcher. Knows nothing of HTTP except the service errors it raises."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import overload

import numpy as np

from cropseg_core.bands import MODEL_BANDS, Layout
from cropseg_core.errors import UnavailableError
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import PipelineConfig, Prepared, Segmentation
from cropseg_core.segmenter import ModelInfo
from cropseg_inference.batching import (
    BatcherStoppedError,
    BatchStats,
    MicroBatcher,
    QueueFullError,
    TileResult,
)
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings

log = logging.getLogger(__name__)
INLINE_PIXELS = 600_000
"""Images up to this many pixels are prepared and finished on the event loop (under a few
milliseconds); larger ones in a worker thread, so that the loop stays free."""


class _Tiles(Sequence[np.ndarray]):
    """The tiles of one request's prepared images as one sequence: each tile is cut when it is
    read and its prediction stitched into its image's mosaic when it is put back."""

    def __init__(self, prepared: list[Prepared]) -> None:
        self.prepared = prepared
        self.mosaics = [item.mosaic() for item in prepared]
        self._offsets = list(itertools.accumulate((len(item.plan) for item in prepared), initial=0))

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        """(image, tile of that image) of tile ``index``."""
        image = bisect.bisect_right(self._offsets, index) - 1
        return image, index - self._offsets[image]

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image, tile = self._locate(index)
        return self.prepared[image].tile(tile)

    def put(self, index: int, prediction: np.ndarray) -> None:
        image, tile = self._locate(index)
        self.mosaics[image].put(tile, prediction)


class SegmentationEngine:
    def __init__(self, settings: InferenceSettings, metrics: InferenceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self._batcher: MicroBatcher | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._ready = False

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and not shutting down (also exported as a gauge)."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value
        self.metrics.ready.set(int(value))

    @property
    def loaded(self) -> LoadedModel:
        if self.model is None:
            raise UnavailableError("the model is not loaded yet")
        return self.model

    @property
    def info(self) -> ModelInfo:
        return self.loaded.info

    def load(self) -> ModelInfo:
        settings = self.settings
        self.model = LoadedModel.load(
            settings.model_path,
            config=PipelineConfig(
                tile_size=settings.tile_size,
                tile_overlap=settings.tile_overlap,
                auto_leaf_px=settings.auto_leaf_px,
            ),
            warmup_runs=0,  # warmed up through the batcher once it runs (start)
            intra_op_threads=settings.intra_op_threads,
            graph_optimization=settings.graph_optimization,
            thread_spinning=settings.thread_spinning,
        )
        info = self.model.info
        self.metrics.set_model(info)
        log.info(
            "loaded model %s %s (sha256 %s) from %s",
            info.name,
            info.version,
            info.sha256[:12],
            settings.model_path,
        )
        return info

    async def start(self) -> None:
        """Start the batcher and warm the model up in the background; ready afterwards."""
        self._batcher = MicroBatcher(
            self.loaded.segmenter.predict,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            max_queue=self.settings.max_queue_tiles,
            max_queue_wait_s=self.settings.max_queue_wait_s,
            on_batch=self._observe_batch,
            on_depth=self.metrics.queue_depth.set,
        )
        self._batcher.start()
        self._warmup = asyncio.get_running_loop().create_task(self._warm_up(), name="warm-up")

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        size = self.settings.tile_size
        blank = np.full((size, size, len(MODEL_BANDS)), 96, dtype=np.uint8)
        for _ in range(self.settings.warmup_runs):
            await self.run_tiles([blank], lambda index, output: None)
        self.ready = True
        log.info("ready: %d warm-up runs in %.2f s", self.settings.warmup_runs, time.perf_counter() - started)

    async def stop(self) -> None:
        self.ready = False
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        if self._batcher is not None:
            await self._batcher.stop()
        if self.model is not None:
            self.model.segmenter.unload()

    def _observe_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.size)
        self.metrics.batch_duration.observe(stats.run_s)

    async def run_tiles(
        self, tiles: Sequence[np.ndarray], deliver: Callable[[int, np.ndarray], None]
    ) -> float:
        """Put ``tiles`` through the batcher, each probability map to ``deliver(index, output)``
        as it is done; returns how long the first tile waited in the queue."""
        if self._batcher is None:
            raise UnavailableError("the model is not loaded yet")
        queued_s = 0.0

        def take(index: int, result: TileResult) -> None:
            nonlocal queued_s
            if index == 0:
                queued_s = result.queued_s
            deliver(index, result.output)

        try:
            await self._batcher.feed(tiles, take)
        except QueueFullError as e:
            raise self._at_capacity(e) from e
        except BatcherStoppedError as e:
            raise UnavailableError(str(e), retry_after_s=self.settings.retry_after_s) from e
        return queued_s

    def admit(self) -> None:
        """Refuse a new request at once (UnavailableError, 503) while the model warms up or when
        the work already queued would keep it waiting too long: called before its body is read."""
        if not self.ready or self._batcher is None:
            raise UnavailableError("the model is warming up", retry_after_s=self.settings.retry_after_s)
        try:
            self._batcher.check_wait()
        except QueueFullError as e:
            raise self._at_capacity(e) from e

    def _at_capacity(self, error: QueueFullError) -> UnavailableError:
        self.metrics.rejected.inc()
        return UnavailableError(
            f"the service is at capacity ({error}); retry after {self.settings.retry_after_s} s",
            retry_after_s=self.settings.retry_after_s,
        )

    async def segment(
        self,
        channels: np.ndarray,
        layout: Layout,
        threshold: float | None = None,
        *,
        gsd_mm: float | None = None,
        scale: float | None = None,
    ) -> Segmentation:
        """Segment one image as decoded (any size, ``layout``'s channels) through the pipeline."""
        (segmentation,) = await self.segment_batch([channels], layout, threshold, gsd_mm=gsd_mm, scale=scale)
        return segmentation

    async def segment_batch(
        self,
        images: list[np.ndarray],
        layout: Layout,
        threshold: float | None = None,
        *,
        gsd_mm: float | None = None,
        scale: float | None = None,
    ) -> list[Segmentation]:
        """Segment several images as one request: their tiles are admitted to the queue together
        (all or none), so a batch never ends half computed and half refused."""
        if not self.ready:
            raise UnavailableError("the model is warming up", retry_after_s=self.settings.retry_after_s)
        model = self.loaded
        threshold = model.threshold(threshold)
        inline = sum(image.shape[0] * image.shape[1] for image in images) <= INLINE_PIXELS
        started = time.perf_counter()
        pipeline = model.pipeline
        prepare = pipeline.prepare
        prepared = []
        for image in images:
            if inline:
                prepared.append(prepare(image, layout, gsd_mm=gsd_mm, scale=scale))
            else:
                prepared.append(await asyncio.to_thread(prepare, image, layout, gsd_mm=gsd_mm, scale=scale))
        preprocess_s = (time.perf_counter() - started) / len(images)

        started = time.perf_counter()
        tiles = _Tiles(prepared)
        queued_s = await self.run_tiles(tiles, tiles.put)
        infer_s = time.perf_counter() - started - queued_s

        results = []
        for item, mosaic in zip(prepared, tiles.mosaics, strict=True):
            started = time.perf_counter()
            if inline:
                probability, mask = pipeline.finish(item, mosaic, threshold)
            else:
                probability, mask = await asyncio.to_thread(pipeline.finish, item, mosaic, threshold)
            timings = {"preprocess": preprocess_s, "queue": queued_s, "infer": infer_s,
                       "postprocess": time.perf_counter() - started}  # fmt: skip
            results.append(
                Segmentation(probability, mask, threshold, len(item.plan), item.scale, layout.name, timings)
            )
        return results
