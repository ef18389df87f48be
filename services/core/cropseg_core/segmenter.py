"""Running the exported ONNX model with ONNX Runtime (no torch).

The ONNX file is self-contained: input ``image`` is uint8 RGB (N, H, W, 3) of any height
and width, output ``vegetation_probability`` is float32 (N, 1, H, W). Preprocessing
(scaling, per-image standardisation, chromaticity) and padding live inside the graph, so
whoever runs the file cannot get them wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

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
    ) -> None:
        self.path = path
        self.intra_op_threads = intra_op_threads  # 0: one thread per physical core
        self.graph_optimization = graph_optimization
        self._session: ort.InferenceSession | None = None
        self.info: ModelInfo | None = None

    def load(self) -> ModelInfo:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.graph_optimization_level = _GRAPH_OPTIMIZATION[self.graph_optimization]
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
        """(N, H, W, 3) or (H, W, 3) uint8 RGB -> (N, H, W) or (H, W) float32 probability."""
        if self._session is None:
            raise RuntimeError("call load() before predict()")
        single = images.ndim == 3
        batch = images[None] if single else images
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) RGB, got {batch.dtype} {batch.shape}")
        probability = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0][:, 0]
        return probability[0] if single else probability

    def segment(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """One RGB uint8 image -> uint8 mask, 255 = vegetation (default: the model's threshold)."""
        if threshold is None:
            threshold = self.info.threshold if self.info else DEFAULT_THRESHOLD
        return np.where(self.predict(image) > threshold, 255, 0).astype(np.uint8)
