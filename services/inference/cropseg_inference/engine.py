"""The model behind the HTTP layer: the core segmentation pipeline with the model's tiles put
through the micro-batcher. Knows nothing of HTTP except the service errors it raises."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from cropseg_core.bands import MODEL_BANDS, Layout
from cropseg_core.pipeline import Pipeline, PipelineConfig, Segmentation
from cropseg_core.segmenter import ModelInfo, OnnxSegmenter
from cropseg_core.web.errors import UnavailableError
from cropseg_inference.batching import BatcherStoppedError, BatchStats, MicroBatcher, QueueFullError
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings

log = logging.getLogger(__name__)
INLINE_PIXELS = 600_000
"""Images up to this many pixels are prepared and finished on the event loop (under a few
milliseconds); larger ones in a worker thread, so that the loop stays free."""


class SegmentationEngine:
    def __init__(self, settings: InferenceSettings, metrics: InferenceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.segmenter = OnnxSegmenter(
            settings.model_path,
            intra_op_threads=settings.intra_op_threads,
            graph_optimization=settings.graph_optimization,
        )
        self.pipeline = Pipeline()
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
    def info(self) -> ModelInfo:
        if self.segmenter.info is None:
            raise UnavailableError("the model is not loaded yet")
        return self.segmenter.info

    def load(self) -> ModelInfo:
        info = self.segmenter.load()
        self.pipeline = Pipeline(
            PipelineConfig(
                tile_size=self.settings.tile_size,
                tile_overlap=self.settings.tile_overlap,
                auto_leaf_px=self.settings.auto_leaf_px,
                model_gsd_mm=info.working_gsd_mm,
            )
        )
        self.metrics.set_model(info)
        log.info(
            "loaded model %s %s (sha256 %s) from %s",
            info.name,
            info.version,
            info.sha256[:12],
            self.segmenter.path,
        )
        return info

    async def start(self) -> None:
        """Start the batcher and warm the model up in the background; ready afterwards."""
        self._batcher = MicroBatcher(
            self.segmenter.predict,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            max_queue=self.settings.max_queue_tiles,
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
            await self.run_tiles([blank])
        self.ready = True
        log.info("ready: %d warm-up runs in %.2f s", self.settings.warmup_runs, time.perf_counter() - started)

    async def stop(self) -> None:
        self.ready = False
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        if self._batcher is not None:
            await self._batcher.stop()
        self.segmenter.unload()

    def _observe_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.size)
        self.metrics.batch_duration.observe(stats.run_s)

    async def run_tiles(self, tiles: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Probabilities of each tile and how long the first one waited in the queue."""
        if self._batcher is None:
            raise UnavailableError("the model is not loaded yet")
        try:
            results = await self._batcher.run(tiles)
        except QueueFullError as e:
            self.metrics.rejected.inc()
            raise UnavailableError(
                f"the service is at capacity ({e}); retry after {self.settings.retry_after_s} s",
                retry_after_s=self.settings.retry_after_s,
            ) from e
        except BatcherStoppedError as e:
            raise UnavailableError(str(e), retry_after_s=self.settings.retry_after_s) from e
        return [r.output for r in results], results[0].queued_s

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
        threshold = self.info.threshold if threshold is None else threshold
        inline = sum(image.shape[0] * image.shape[1] for image in images) <= INLINE_PIXELS
        started = time.perf_counter()
        prepare = self.pipeline.prepare
        prepared = []
        for image in images:
            if inline:
                prepared.append(prepare(image, layout, gsd_mm=gsd_mm, scale=scale))
            else:
                prepared.append(await asyncio.to_thread(prepare, image, layout, gsd_mm=gsd_mm, scale=scale))
        preprocess_s = (time.perf_counter() - started) / len(images)

        started = time.perf_counter()
        outputs, queued_s = await self.run_tiles([tile for item in prepared for tile in item.tiles])
        infer_s = time.perf_counter() - started - queued_s

        results = []
        for item in prepared:
            own, outputs = outputs[: len(item.tiles)], outputs[len(item.tiles) :]
            started = time.perf_counter()
            if inline:
                probability, mask = self.pipeline.finish(item, own, threshold)
            else:
                probability, mask = await asyncio.to_thread(self.pipeline.finish, item, own, threshold)
            timings = {"preprocess": preprocess_s, "queue": queued_s, "infer": infer_s,
                       "postprocess": time.perf_counter() - started}  # fmt: skip
            results.append(
                Segmentation(probability, mask, threshold, len(item.plan), item.scale, layout.name, timings)
            )
        return results
