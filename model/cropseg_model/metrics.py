"""Segmentation metrics on binary masks, as the seed reported them (pixel accuracy, IoU).

Masks are uint8 with 255 = vegetation, 0 = soil and optionally 128 = ignore (pixels left
out of both metrics). IoU of an image where both masks are empty is 1: the prediction is
exactly right. Means are reported over all images and over *non-black* images, i.e.
excluding tiles that are entirely out of field, where every method scores 1 trivially.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cropseg_model.datasets import IGNORE

BLACK_LEVEL = 2


@dataclass(frozen=True)
class ImageScore:
    pixel_accuracy: float
    iou: float
    black: bool


def score(prediction: np.ndarray, truth: np.ndarray, image: np.ndarray | None = None) -> ImageScore:
    """Score one predicted mask against the truth; ``image`` tells whether the tile is all black."""
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
    return ImageScore(
        pixel_accuracy=correct / total if total else 1.0,
        iou=intersection / union if union else 1.0,
        black=black,
    )


def summarise(scores: Iterable[ImageScore]) -> dict[str, float | int]:
    """Mean pixel accuracy and IoU over all images and over non-black images."""
    items = list(scores)
    if not items:
        raise ValueError("no images to summarise")
    in_field = [s for s in items if not s.black] or items
    return {
        "images": len(items),
        "non_black_images": sum(not s.black for s in items),
        "pixel_accuracy": float(np.mean([s.pixel_accuracy for s in items])),
        "iou": float(np.mean([s.iou for s in items])),
        "pixel_accuracy_non_black": float(np.mean([s.pixel_accuracy for s in in_field])),
        "iou_non_black": float(np.mean([s.iou for s in in_field])),
    }
