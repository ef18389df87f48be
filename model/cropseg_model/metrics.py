"""Dataset-level summaries of per-image scores (``cropseg_core.masks.score``).

Means are reported over all images and over *non-black* images, i.e. excluding tiles that
are entirely out of field, where every method scores 1 trivially.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from cropseg_core.masks import IGNORE, MaskScore

BOUNDARY_TOLERANCE_PX = 2


def summarise(scores: Iterable[MaskScore]) -> dict[str, float | int]:
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


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Vegetation pixels with a soil pixel among their 4-neighbours (the mask's inner edge)."""
    vegetation = mask.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return (vegetation > 0) & (cv2.erode(vegetation, cross, borderType=cv2.BORDER_REPLICATE) == 0)


def boundary_f1(prediction: np.ndarray, truth: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE_PX) -> float:
    """Boundary F1 (Csurka et al. 2013): the share of predicted edge pixels within ``tolerance``
    pixels of a true edge (precision) and of true edge pixels within it of a predicted one
    (recall), combined. Pixels labelled ignore (128) count as neither. 1 when neither mask
    has an edge, 0 when only one has."""
    counted = truth != IGNORE
    predicted = _boundary((prediction > 127) & counted) & counted
    actual = _boundary((truth > 127) & counted) & counted
    if not predicted.any() and not actual.any():
        return 1.0
    if not predicted.any() or not actual.any():
        return 0.0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_actual = cv2.dilate(actual.astype(np.uint8), disk) > 0
    near_predicted = cv2.dilate(predicted.astype(np.uint8), disk) > 0
    precision = float((predicted & near_actual).sum() / predicted.sum())
    recall = float((actual & near_predicted).sum() / actual.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
