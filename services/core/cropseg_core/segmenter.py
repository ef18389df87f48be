"""Running the exported ONNX model with ONNX Runtime (no torch).

The ONNX file is self-contained: input ``image`` is uint8 (N, H, W, 4) in the bands of
:data:`cropseg_core.bands.MODEL_BANDS` (red, green, blue, NIR; 0 where absent) of any height
and width, output ``vegetation_probability`` is float32 (N, 1, H, W). Preprocessing
(scaling, per-image standardisation, chromaticity, vegetation indices) and padding live
inside the graph, so whoever runs the file cannot get them wrong. Images reach it through
:mod:`cropseg_core.pipeline`, which maps layouts, scales and tiles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from cropseg_core.bands import MODEL_BANDS
from cropseg_core.pipeline import DEFAULT_MODEL_GSD_MM

INPUT_NAME = "image"
OUTPUT_NAME = "vegetation_probability"
DEFAULT_THRESHOLD = 0.5  # used when the model file does not carry a calibrated one

GraphOptimization = Literal["disable", "basic", "extended", "all"]
_GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    threshold: float
    metadata: dict[str, str]

    @property
    def working_gsd_mm(self) -> float:
        """Ground sampling distance the model works best at (mm per pixel)."""
        return float(self.metadata.get("working_gsd_mm", DEFAULT_MODEL_GSD_MM))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OnnxSegmenter:
    """Loads the ONNX U-Net once; ``predict`` maps RGB uint8 images to probabilities."""

    def __init__(
        self,
        path: Path,
        *,
        intra_op_threads: int = 0,
        graph_optimization: GraphOptimization = "all",
        thread_spinning: bool = True,
    ) -> None:
        self.path = path
        self.intra_op_threads = intra_op_threads  # 0: one thread per physical core
        self.graph_optimization = graph_optimization
        self.thread_spinning = thread_spinning  # idle intra-op threads busy-wait for the next run
        self._session: ort.InferenceSession | None = None
        self.info: ModelInfo | None = None

    def load(self) -> ModelInfo:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.graph_optimization_level = _GRAPH_OPTIMIZATION[self.graph_optimization]
        spinning = "1" if self.thread_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._session = session
        self.info = ModelInfo(
            name=metadata.get("name", self.path.stem),
            version=metadata.get("version", "unknown"),
            sha256=file_sha256(self.path),
            threshold=float(metadata.get("threshold", DEFAULT_THRESHOLD)),
            metadata=metadata,
        )
        return self.info

    def unload(self) -> None:
        self._session = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 4) or (H, W, 4) uint8 MODEL_BANDS -> (N, H, W) or (H, W) float32 probability."""
        if self._session is None:
            raise RuntimeError("call load() before predict()")
        single = images.ndim == 3
        batch = images[None] if single else images
        bands = len(MODEL_BANDS)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != bands:
            raise ValueError(f"expected uint8 (N, H, W, {bands}) bands, got {batch.dtype} {batch.shape}")
        probability = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0][:, 0]
        return probability[0] if single else probability
