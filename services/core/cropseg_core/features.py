"""Per-image features for drift detection, computed the same way everywhere.

The model pipeline stores them for the training distribution (the reference profile that
ships with the model); the drift monitor computes them for recent uploads. One definition
keeps the two comparable.

:func:`image_features` returns both kinds:

* the grey histogram: 256 bins of ITU-R BT.601 luma over all pixels, as fractions (the
  seed's Alibi Detect feature);
* the image properties the seed checked with Deepchecks, over in-field (non-black) pixels:
  brightness, RMS contrast, relative intensity of each channel, sharpness (variance of the
  Laplacian of luma) and the out-of-field black fraction.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROPERTY_NAMES = (
    "brightness",
    "rms_contrast",
    "red_relative_intensity",
    "green_relative_intensity",
    "blue_relative_intensity",
    "sharpness",
    "black_fraction",
)
BLACK_LEVEL = 2
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 luma in [0, 255]."""
    return (image.reshape(-1, 3).astype(np.float32) @ _LUMA).reshape(image.shape[:2])


def image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grey histogram (256,) and the PROPERTY_NAMES vector (7,) of one image, as float32.

    Both come from one pass over the pixels (luma, in-field mask and channel sums are shared
    and variances are centred dot products): this is the drift job's inner loop, and it
    costs less than decoding the image (docs/performance.md).
    """
    grey = luma(image)
    histogram = np.bincount(np.rint(grey).astype(np.uint8).ravel(), minlength=256) / grey.size
    in_field = np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2]) > BLACK_LEVEL
    count = int(np.count_nonzero(in_field))
    black_fraction = 1.0 - count / in_field.size
    if count == 0:
        neutral = [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, black_fraction]
        return histogram.astype(np.float32), np.array(neutral, np.float32)
    everywhere = count == in_field.size
    values = grey.ravel() if everywhere else grey[in_field]
    channel_sums = np.array([image[..., c].sum(dtype=np.uint64) for c in range(3)], np.float64)
    if not everywhere:
        channel_sums -= image[~in_field].sum(axis=0, dtype=np.uint64)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1]
    laplacian += grey[1:-1, :-2]
    laplacian += grey[1:-1, 2:]
    laplacian -= 4 * grey[1:-1, 1:-1]
    edges = laplacian.ravel() if everywhere else laplacian[in_field[1:-1, 1:-1]]
    properties = [
        _mean(values) / 255.0,
        np.sqrt(_variance(values)) / 255.0,
        *(channel_sums / max(channel_sums.sum(), 1e-9)),
        _variance(edges) / 255.0**2,
        black_fraction,
    ]
    return histogram.astype(np.float32), np.array(properties, np.float32)


def _mean(values: np.ndarray) -> float:
    return float(values.sum(dtype=np.float64)) / values.size


def _variance(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    centred = values - np.float32(_mean(values))
    return float(centred @ centred) / values.size


@dataclass(frozen=True)
class ReferenceProfile:
    """What "normal" input looks like: features of a reference set from the training distribution.

    Written by ``cropseg-model profile`` and shipped with the model; the drift monitor
    compares recent uploads and predictions against it.
    """

    grey_histograms: np.ndarray
    """(n, 256) per-image grey histograms."""
    properties: np.ndarray
    """(n, len(PROPERTY_NAMES)) per-image properties."""
    vegetation_fraction: np.ndarray
    """(n,) true vegetation fraction of each image."""
    predicted_vegetation_fraction: np.ndarray
    """(n,) the model's predicted vegetation fraction of each image."""
    image_names: np.ndarray
    meta: dict[str, Any]


def load_reference_profile(path: Path) -> ReferenceProfile:
    """Read a reference profile (.npz); ValueError saying what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read the reference profile {path}: {e}") from e
    fields = (
        "grey_histograms",
        "properties",
        "vegetation_fraction",
        "predicted_vegetation_fraction",
        "image_names",
    )
    missing = [key for key in (*fields, "property_names", "meta_json") if key not in arrays]
    if missing:
        raise ValueError(
            f"the reference profile {path} lacks {', '.join(missing)}: rebuild it with cropseg-model profile"
        )
    if tuple(arrays["property_names"]) != PROPERTY_NAMES:
        raise ValueError(
            f"the reference profile {path} has other image properties than this version computes"
        )
    return ReferenceProfile(**{key: arrays[key] for key in fields}, meta=json.loads(str(arrays["meta_json"])))
