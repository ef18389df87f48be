"""Per-image features for drift detection, computed the same way everywhere.

The model pipeline stores them for the training distribution (the reference profile that
ships with the model); the drift monitor computes them for recent uploads. One definition
keeps the two comparable.

* ``grey_histogram``: 256-bin histogram of ITU-R BT.601 luma over all pixels, as fractions
  (the seed's Alibi Detect feature).
* ``image_properties``: the properties the seed checked with Deepchecks, over in-field
  (non-black) pixels: brightness, RMS contrast, relative intensity of each channel,
  sharpness (variance of the Laplacian of luma) and the out-of-field black fraction.
"""

from __future__ import annotations

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
    return image.astype(np.float32) @ _LUMA


def grey_histogram(image: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.clip(np.rint(luma(image)), 0, 255).astype(np.int64).ravel(), minlength=256)
    return (counts / max(counts.sum(), 1)).astype(np.float32)


def image_properties(image: np.ndarray) -> np.ndarray:
    """The PROPERTY_NAMES of one image as a float32 vector (zeros for an all-black tile)."""
    grey = luma(image)
    in_field = image.max(axis=2) > BLACK_LEVEL
    black_fraction = 1.0 - float(in_field.mean())
    if not in_field.any():
        return np.array([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, black_fraction], np.float32)
    values = grey[in_field] / 255.0
    channel_means = image[in_field].astype(np.float64).mean(axis=0)
    relative = channel_means / max(channel_means.sum(), 1e-9)
    laplacian = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    ) / 255.0
    interior = in_field[1:-1, 1:-1]
    sharpness = float(laplacian[interior].var()) if interior.any() else 0.0
    return np.array([values.mean(), values.std(), *relative, sharpness, black_fraction], np.float32)
