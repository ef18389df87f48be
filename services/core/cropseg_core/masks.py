"""Mask helpers shared by the pipeline and the services: PNG encoding, overlays, scores.

Masks are uint8 with 255 = vegetation, 0 = soil and optionally 128 = ignore (pixels left
out of every score). IoU of an image where both masks are empty is 1: the prediction is
exactly right.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cropseg_core.bands import Layout

IGNORE = 128
BLACK_LEVEL = 2  # a pixel whose channels are all at most this is out of field (black)
OVERLAY_COLOUR = (255, 0, 255)  # magenta: stands out on soil and green leaves (true colour)
FALSE_COLOUR_OVERLAY = (255, 255, 0)  # yellow: leaves of a false-colour composite are red to purple


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Losslessly encode a uint8 (H, W) mask or (H, W, 3) RGB image as PNG (level 0-9: size vs time)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


OVERLAY_ROWS = 256


def overlay_colour(layout: Layout) -> tuple[int, int, int]:
    """The tint that contrasts with vegetation in ``layout``'s picture: magenta on true colour
    (green leaves), yellow on a false-colour composite (NIR shown as red: purple leaves)."""
    return OVERLAY_COLOUR if layout.has("blue") and layout.has("green") else FALSE_COLOUR_OVERLAY


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.45,
    *,
    in_place: bool = False,
    colour: tuple[int, int, int] = OVERLAY_COLOUR,
) -> np.ndarray:
    """Tint the vegetation pixels of an RGB image with ``colour``; the rest is left as it is.
    ``in_place``: tint ``image`` itself (a picture made for this) instead of a copy."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    out = image if in_place else image.copy()
    tint = alpha * np.array(colour, np.float32)
    for top in range(0, image.shape[0], OVERLAY_ROWS):  # strips: float copies of a strip, not the image
        rows = out[top : top + OVERLAY_ROWS]
        selected = mask[top : top + OVERLAY_ROWS] > 127
        rows[selected] = np.round((1 - alpha) * rows[selected].astype(np.float32) + tint).astype(np.uint8)
    return out


def vegetation_fraction(mask: np.ndarray) -> float:
    return float((mask > 127).mean()) if mask.size else 0.0


@dataclass(frozen=True)
class MaskScore:
    pixel_accuracy: float
    iou: float
    black: bool
    """The image is entirely out of field (every method scores 1 there trivially)."""


def score(prediction: np.ndarray, truth: np.ndarray, image: np.ndarray | None = None) -> MaskScore:
    """Score a predicted mask against the truth (the seed's accuracy and IoU); ``image``
    tells whether the tile is all black."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    counted = truth != IGNORE
    predicted = (prediction > 127) & counted
    actual = (truth > 127) & counted
    total = int(counted.sum())
    correct = total - int((predicted ^ actual).sum())
    union = int((predicted | actual).sum())
    intersection = int((predicted & actual).sum())
    black = bool(image is not None and int(image.max()) <= BLACK_LEVEL)
    return MaskScore(
        pixel_accuracy=correct / total if total else 1.0,
        iou=intersection / union if union else 1.0,
        black=black,
    )
