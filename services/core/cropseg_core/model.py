"""The model as every entry point holds it: the ONNX session with its metadata, the threshold
rule, the pipeline configured for the model's working resolution, warmed up.

The inference service, evaluation, ``cropseg segment-raster`` / ``batch`` and the benchmarks
load it here, so that "the model's own threshold unless one is given" and "the pipeline at the
model file's ground sampling distance" are decided once (what a valid threshold is:
:data:`cropseg_core.contracts.Threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cropseg_core.bands import MODEL_BANDS, Layout
from cropseg_core.pipeline import Pipeline, PipelineConfig, Segmentation
from cropseg_core.segmenter import GraphOptimization, ModelInfo, OnnxSegmenter


@dataclass(frozen=True)
class LoadedModel:
    segmenter: OnnxSegmenter
    info: ModelInfo
    pipeline: Pipeline

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        config: PipelineConfig | None = None,
        warmup_runs: int = 2,
        intra_op_threads: int = 0,
        graph_optimization: GraphOptimization = "all",
        thread_spinning: bool = True,
    ) -> LoadedModel:
        """Load the file; ``config``'s tiling and scaling with the file's working resolution.

        ``warmup_runs`` blank tiles run here (ONNX Runtime sizes its memory arena over the first
        two runs of a shape, so the first real windows would otherwise raise the peak); the
        inference service passes 0 and warms up through its batcher instead.
        """
        segmenter = OnnxSegmenter(
            path,
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
            thread_spinning=thread_spinning,
        )
        info = segmenter.load()
        pipeline = Pipeline(replace(config or PipelineConfig(), model_gsd_mm=info.working_gsd_mm))
        side = pipeline.config.tile_size
        for _ in range(warmup_runs):
            segmenter.predict(np.zeros((side, side, len(MODEL_BANDS)), np.uint8))
        return cls(segmenter, info, pipeline)

    def threshold(self, requested: float | None = None) -> float:
        """The requested threshold, or the model's own when none is given."""
        return self.info.threshold if requested is None else requested

    def variant(self, **changes: Any) -> Pipeline:
        """The pipeline with some settings changed (evaluation's comparisons)."""
        return Pipeline(replace(self.pipeline.config, **changes))

    def run(
        self,
        channels: np.ndarray,
        layout: Layout,
        threshold: float | None = None,
        *,
        pipeline: Pipeline | None = None,
        gsd_mm: float | None = None,
        scale: float | None = None,
    ) -> Segmentation:
        """Segment one decoded image in ``layout`` as the API does (in this process)."""
        used = pipeline or self.pipeline
        return used.run(
            self.segmenter.predict, channels, self.threshold(threshold), layout, gsd_mm=gsd_mm, scale=scale
        )
