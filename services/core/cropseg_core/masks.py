"""Mask helpers shared by the pipeline and the services: PNG encoding and overlays."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

OVERLAY_COLOUR = (255, 0, 255)  # magenta: visible on soil, green leaves and false-colour leaves


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Losslessly encode a uint8 (H, W) mask or (H, W, 3) RGB image as PNG (level 0-9: size vs time)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint the vegetation pixels of an RGB image; the rest is left as it is."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    out = image.astype(np.float32)
    selected = mask > 127
    out[selected] = (1 - alpha) * out[selected] + alpha * np.array(OVERLAY_COLOUR, np.float32)
    return np.round(out).astype(np.uint8)


def vegetation_fraction(mask: np.ndarray) -> float:
    return float((mask > 127).mean()) if mask.size else 0.0
