"""The work every peer server does per request, identical to cropseg's ``POST /api/v1/segment``.

PNG (or JPEG/TIFF) bytes in, PNG mask bytes out: safe decode, the core segmentation pipeline
(band mapping, automatic working resolution, overlapping tiles, stitching, resize back, the
model's threshold) on the committed ONNX model with the service's session options, and the
mask encoded at the service's PNG level. Only the serving framework around it differs, so a
peer's numbers measure its framework and nothing else.

Each peer's virtualenv installs ``services/core[onnx]`` (the same pinned ONNX Runtime, NumPy
and Pillow as the service) and imports this file from ``benchmarks/peers``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cropseg_core.bands import get_layout
from cropseg_core.imaging import decode_channels
from cropseg_core.masks import encode_png
from cropseg_core.model import LoadedModel

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("CROPSEG_PEER_MODEL", REPO / "model" / "artifacts" / "cropseg-unet.onnx"))
RGB = get_layout("rgb")
PNG_LEVEL = 3  # cropseg_inference.encoding.PNG_LEVEL (not imported: peers do not install the service)


class Workload:
    """Load once per server process; call with the request body's bytes."""

    def __init__(self, model: Path = MODEL) -> None:
        self.model = LoadedModel.load(model, warmup_runs=0)

    def __call__(self, image: bytes) -> bytes:
        channels = decode_channels(image).pixels
        segmentation = self.model.run(channels, RGB)
        return encode_png(segmentation.mask, PNG_LEVEL)
