"""Dataset-level summaries of per-image scores (``cropseg_core.masks.score``).

Means are reported over all images and over *non-black* images, i.e. excluding tiles that
are entirely out of field, where every method scores 1 trivially.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cropseg_core.masks import MaskScore


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
